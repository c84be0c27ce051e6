// Matrix products on the packed SIMD GEMM (CPU) or tensor cores (CUDA).
import { native } from "../native";
import { Tensor, wrap } from "../tensor";

/** a [..., M, K] @ b [..., K, N]; batch dims equal or one side unbatched. Transposed views are free. */
export const matmul = (a: Tensor, b: Tensor): Tensor => wrap(native().matmul(a.handle, b.handle));

/** x [..., in] @ weight[out, in]^T + bias (+ residual), fused in the GEMM epilogue. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, residual?: Tensor | null): Tensor {
  return wrap(native().linear(x.handle, weight.handle, bias ? bias.handle : null, residual ? residual.handle : null));
}
