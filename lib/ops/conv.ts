// 2-D convolution on channels-last activations (implicit GEMM; fused bias and residual).
import { native } from "../native";
import { Tensor, wrap } from "../tensor";

export interface Conv2dOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  dilation?: number | [number, number];
  bias?: Tensor | null;
  /** Added to the output in the epilogue (a ResNet skip connection). */
  residual?: Tensor | null;
}

const pair = (v: number | [number, number] | undefined, dflt: number): number[] =>
  v === undefined ? [dflt, dflt] : typeof v === "number" ? [v, v] : [v[0], v[1]];

/** x [N,H,W,C] (NHWC), weight [K,R,S,C] (OHWI) -> [N,P,Q,K]. */
export function conv2d(x: Tensor, weight: Tensor, opts: Conv2dOptions = {}): Tensor {
  return wrap(
    native().conv2d(x.handle, weight.handle, opts.bias ? opts.bias.handle : null, opts.residual ? opts.residual.handle : null,
      pair(opts.stride, 1), pair(opts.padding, 0), pair(opts.dilation, 1)),
  );
}

/** PyTorch's OIHW conv weight -> OHWI, the layout conv2d takes (done once at load). */
export function convWeightToOHWI(w: Tensor): Tensor {
  if (w.ndim !== 4) throw new RangeError(`convWeightToOHWI: weight must have 4 dims, got [${w.shape.join(",")}]`);
  const v = w.permute([0, 2, 3, 1]);
  try { return v.contiguous(); } finally { v.dispose(); }
}

/** NCHW <-> NHWC copies for the public edges. */
export function nchwToNhwc(x: Tensor): Tensor {
  const v = x.permute([0, 2, 3, 1]);
  try { return v.contiguous(); } finally { v.dispose(); }
}
export function nhwcToNchw(x: Tensor): Tensor {
  const v = x.permute([0, 3, 1, 2]);
  try { return v.contiguous(); } finally { v.dispose(); }
}
