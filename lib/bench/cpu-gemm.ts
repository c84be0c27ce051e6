// GEMM cases: square matmuls and the SD1.5 U-Net's Linear shapes (activations [M,K] x weight [N,K]).
import * as ops from "../ops";
import { randn, type GemmCase } from "./cpu-common";
import type { Prepared } from "./cpu-ops";

export function gemmCases(quick: boolean): GemmCase[] {
  const square = (quick ? [1024] : [1024, 2048, 4096]).map((n): GemmCase => ({ group: "gemm", name: `${n}^3`, kind: "matmul", M: n, K: n, N: n }));
  // M = tokens x batch 2 at 64x64 (8192), 32x32 (2048), 16x16 (512)
  const sd: [number, number, number][] = quick
    ? [[8192, 320, 320], [2048, 640, 640]]
    : [[8192, 320, 320], [8192, 320, 1280], [8192, 1280, 320], [2048, 640, 640], [512, 1280, 1280], [8192, 320, 2560]];
  const f32 = [...square, ...sd.map(([M, K, N]): GemmCase => ({ group: "gemm", name: `linear M=${M} K=${K} N=${N}`, kind: "linear", M, K, N }))];
  // the same shapes with bfloat16 operands (vdpbf16ps where the CPU has AVX512_BF16)
  return [...f32, ...f32.map((c): GemmCase => ({ ...c, name: `${c.name} bf16`, dtype: "bfloat16" }))];
}

export function prepareGemm(c: GemmCase): Prepared {
  const a = randn([c.M, c.K], 1, c.dtype);
  const b = c.kind === "matmul" ? randn([c.K, c.N], 2, c.dtype) : randn([c.N, c.K], 2, c.dtype);
  return { inputs: [a, b], fn: c.kind === "matmul" ? () => ops.matmul(a, b) : () => ops.linear(a, b) };
}
