// 2-D convolution on channels-last activations (implicit GEMM; fused bias and residual).
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

export interface Conv2dOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  dilation?: number | [number, number];
  bias?: Tensor | null;
  /** Added to the output in the epilogue (a ResNet skip connection). */
  residual?: Tensor | null;
  /**
   * CPU algorithm request for stride-1 3x3 convolutions: "auto" (default: per shape and dtype),
   * "direct" (implicit GEMM) or "winograd" (F(4x4,3x3) in float32, F(2x2,3x3) in bfloat16; ignored
   * where it does not apply). A forced DIFFUSEKIT_CONV_ALGO / setConv2dAlgo wins. CUDA ignores it.
   */
  algo?: ConvAlgo;
}

export type ConvAlgo = "auto" | "direct" | "winograd";

function pair(v: number | readonly number[] | undefined, dflt: number, name: string): number[] {
  if (v === undefined) return [dflt, dflt];
  if (typeof v === "number") return [v, v];
  if (!Array.isArray(v) || v.length !== 2) throw new RangeError(`conv2d: ${name} must be a number or [h, w], got ${JSON.stringify(v)}`);
  return [v[0], v[1]];
}

/** x [N,H,W,C] (NHWC), weight [K,R,S,C] (OHWI) -> [N,P,Q,K]. */
export function conv2d(x: Tensor, weight: Tensor, opts: Conv2dOptions = {}): Tensor {
  return wrap(
    native().conv2d(arg(x, "conv2d", "x"), arg(weight, "conv2d", "weight"), optArg(opts.bias, "conv2d", "bias"), optArg(opts.residual, "conv2d", "residual"),
      pair(opts.stride, 1, "stride"), pair(opts.padding, 0, "padding"), pair(opts.dilation, 1, "dilation"), opts.algo),
  );
}

/** PyTorch's OIHW conv weight -> OHWI, the layout conv2d takes (done once at load). */
export function convWeightToOHWI(w: Tensor): Tensor {
  arg(w, "convWeightToOHWI", "weight");
  if (w.ndim !== 4) throw new RangeError(`convWeightToOHWI: weight must have 4 dims, got [${w.shape.join(",")}]`);
  const v = w.permute([0, 2, 3, 1]);
  try { return v.contiguous(); } finally { v.dispose(); }
}

/** NCHW <-> NHWC copies for the public edges. */
function check4d(x: Tensor, op: string): void {
  arg(x, op, "x");
  if (x.ndim !== 4) throw new RangeError(`${op}: input must have 4 dims, got [${x.shape.join(",")}]`);
}
export function nchwToNhwc(x: Tensor): Tensor {
  check4d(x, "nchwToNhwc");
  const v = x.permute([0, 2, 3, 1]);
  try { return v.contiguous(); } finally { v.dispose(); }
}
export function nhwcToNchw(x: Tensor): Tensor {
  check4d(x, "nhwcToNchw");
  const v = x.permute([0, 3, 1, 2]);
  try { return v.contiguous(); } finally { v.dispose(); }
}
