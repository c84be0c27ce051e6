// Matrix products on the packed SIMD GEMM (CPU) or tensor cores (CUDA).
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

/** a [..., M, K] @ b [..., K, N]; batch dims equal or one side unbatched. Transposed views are free. */
export const matmul = (a: Tensor, b: Tensor): Tensor => wrap(native().matmul(arg(a, "matmul", "a"), arg(b, "matmul", "b")));

/** x [..., in] @ weight[out, in]^T + bias (+ residual), fused in the GEMM epilogue. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, residual?: Tensor | null): Tensor {
  return wrap(native().linear(arg(x, "linear", "x"), arg(weight, "linear", "weight"), optArg(bias, "linear", "bias"), optArg(residual, "linear", "residual")));
}
