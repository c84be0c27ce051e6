// Attention cases: batch 2, 8 heads, the SD1.5 U-Net's self-attention at 64x64 and 32x32 and its
// cross-attention over 77 text tokens.
import * as ops from "../ops";
import { randn, type AttentionCase } from "./cpu-common";
import type { Prepared } from "./cpu-ops";

export function attentionCases(quick: boolean): AttentionCase[] {
  const shapes: [string, number, number, number][] = quick
    ? [["self", 1024, 1024, 80], ["cross", 4096, 77, 40]]
    : [["self", 4096, 4096, 40], ["self", 1024, 1024, 80], ["cross", 4096, 77, 40]];
  const f32 = shapes.map(([kind, Nq, Nk, D]): AttentionCase => ({ group: "attention", name: `${kind} ${Nq}x${Nk} d${D}`, B: 2, heads: 8, Nq, Nk, D }));
  // The same shapes with bf16 q, k, v, out (vdpbf16ps where the CPU has it): % of the bf16 peak.
  const bf16 = f32.map((c): AttentionCase => ({ ...c, name: `${c.name} bf16`, dtype: "bfloat16" }));
  return [...f32, ...bf16];
}

export function prepareAttention(c: AttentionCase): Prepared {
  const make = (shape: number[], seed: number) => {
    const t = randn(shape, seed);
    if (c.dtype !== "bfloat16") return t;
    try { return t.to("cpu", "bfloat16"); } finally { t.dispose(); }
  };
  const q = make([c.B, c.Nq, c.heads * c.D], 5), k = make([c.B, c.Nk, c.heads * c.D], 6), v = make([c.B, c.Nk, c.heads * c.D], 7);
  return { inputs: [q, k, v], fn: () => ops.attention(q, k, v, { heads: c.heads }) };
}
