// Normalisations (float32 statistics on every backend).
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

export interface GroupNormOptions {
  weight?: Tensor | null;
  bias?: Tensor | null;
  eps?: number;
  /** Apply SiLU after the affine transform, fused (ResNet blocks do this every time). */
  silu?: boolean;
}

/** x [N, ..., C] channels-last; `groups` groups of consecutive channels. */
export function groupNorm(x: Tensor, groups: number, opts: GroupNormOptions = {}): Tensor {
  return wrap(native().groupNorm(arg(x, "groupNorm", "x"), groups, optArg(opts.weight, "groupNorm", "weight"), optArg(opts.bias, "groupNorm", "bias"), opts.eps ?? 1e-5, opts.silu ?? false));
}

/** Normalises the last dim. */
export function layerNorm(x: Tensor, opts: { weight?: Tensor | null; bias?: Tensor | null; eps?: number } = {}): Tensor {
  return wrap(native().layerNorm(arg(x, "layerNorm", "x"), optArg(opts.weight, "layerNorm", "weight"), optArg(opts.bias, "layerNorm", "bias"), opts.eps ?? 1e-5));
}
