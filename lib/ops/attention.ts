// Fused multi-head scaled-dot-product attention (flash-style: no N x N score matrix).
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

export interface AttentionOptions {
  heads: number;
  /** Defaults to 1/sqrt(head size). */
  scale?: number;
  causal?: boolean;
  /** Additive float32 mask broadcastable to [B, heads, Nq, Nk]. */
  mask?: Tensor | null;
}

/**
 * q [B, Nq, heads*D], k [B, Nk, heads*D], v [B, Nk, heads*Dv] -> [B, Nq, heads*Dv]: the token
 * layout of diffusers' attention before/after its head reshapes, so no transposes are needed.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const heads = opts.heads;
  if (!Number.isInteger(heads) || heads < 1) throw new RangeError(`attention: heads must be a positive integer, got ${heads}`);
  const d = q.ndim === 3 ? q.shape[2] / heads : NaN;
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  return wrap(native().attention(arg(q, "attention", "q"), arg(k, "attention", "k"), arg(v, "attention", "v"), heads, scale, opts.causal ?? false, optArg(opts.mask, "attention", "mask")));
}
