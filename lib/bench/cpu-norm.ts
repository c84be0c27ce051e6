// Normalisation cases (memory-bound; judged in GB/s against the measured streaming bandwidth):
// the U-Net's groupNorm+SiLU and its transformer layerNorms, and the VAE decoder's groupNorm.
import * as ops from "../ops";
import { randn, type NormCase } from "./cpu-common";
import type { Prepared } from "./cpu-ops";
import { Tensor } from "../tensor";

export function normCases(quick: boolean): NormCase[] {
  const gn: [number, number, number][] = quick ? [[2, 32, 640]] : [[2, 64, 320], [2, 32, 640], [2, 16, 1280], [1, 256, 256], [1, 512, 128]];
  const ln: [number, number][] = quick ? [[1024, 640]] : [[4096, 320], [1024, 640], [256, 1280]];
  return [
    ...gn.map(([N, H, C]): NormCase => ({ group: "norm", name: `groupNorm+silu ${N}x${H}x${H}x${C}`, kind: "groupnorm", shape: [N, H, H, C], groups: 32, silu: true })),
    ...ln.map(([T, C]): NormCase => ({ group: "norm", name: `layerNorm 2x${T}x${C}`, kind: "layernorm", shape: [2, T, C] })),
  ];
}

export function prepareNorm(c: NormCase): Prepared {
  const C = c.shape[c.shape.length - 1];
  const x = randn(c.shape, 8), weight = Tensor.ones([C]), bias = Tensor.zeros([C]);
  const fn = c.kind === "groupnorm"
    ? () => ops.groupNorm(x, c.groups ?? 32, { weight, bias, silu: c.silu ?? false })
    : () => ops.layerNorm(x, { weight, bias });
  return { inputs: [x, weight, bias], fn };
}
