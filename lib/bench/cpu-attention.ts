// Attention cases: batch 2, 8 heads, the SD1.5 U-Net's self-attention at 64x64 and 32x32 and its
// cross-attention over 77 text tokens.
import * as ops from "../ops";
import { randn, type AttentionCase } from "./cpu-common";
import type { Prepared } from "./cpu-ops";

export function attentionCases(quick: boolean): AttentionCase[] {
  const shapes: [string, number, number, number][] = quick
    ? [["self", 1024, 1024, 80], ["cross", 4096, 77, 40]]
    : [["self", 4096, 4096, 40], ["self", 1024, 1024, 80], ["cross", 4096, 77, 40]];
  return shapes.map(([kind, Nq, Nk, D]) => ({ group: "attention", name: `${kind} ${Nq}x${Nk} d${D}`, B: 2, heads: 8, Nq, Nk, D }));
}

export function prepareAttention(c: AttentionCase): Prepared {
  const q = randn([c.B, c.Nq, c.heads * c.D], 5), k = randn([c.B, c.Nk, c.heads * c.D], 6), v = randn([c.B, c.Nk, c.heads * c.D], 7);
  return { inputs: [q, k, v], fn: () => ops.attention(q, k, v, { heads: c.heads }) };
}
