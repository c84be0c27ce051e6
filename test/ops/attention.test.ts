// Fused multi-head attention in token layout [B, N, heads*D] against an explicit
// softmax(scale * q k^T + mask) v per (batch, head).
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

const TOL = { atol: 2e-5, rtol: 1e-5 };

interface Case {
  name: string;
  B: number; Nq: number; Nk: number; heads: number; D: number;
  Dv?: number;
  scale?: number;
  causal?: boolean;
  qStd?: number;
  /** mask shape, as a function of the case */
  mask?: number[];
}

const CASES: Case[] = [
  { name: "1 head, D 8, self-attention", B: 1, Nq: 5, Nk: 5, heads: 1, D: 8 },
  { name: "cross-attention Nq 7, Nk 77, D 40", B: 2, Nq: 7, Nk: 77, heads: 2, D: 40 },
  { name: "D 1, 8 heads, Nq 65 > Nk 3", B: 1, Nq: 65, Nk: 3, heads: 8, D: 1 },
  { name: "D 3, 3 heads, 17 tokens", B: 2, Nq: 17, Nk: 17, heads: 3, D: 3 },
  { name: "D 80, Nq 33, Nk 65", B: 1, Nq: 33, Nk: 65, heads: 2, D: 80 },
  { name: "D 17, long keys (Nk 300)", B: 1, Nq: 9, Nk: 300, heads: 1, D: 17 },
  { name: "D 160", B: 1, Nq: 6, Nk: 11, heads: 1, D: 160 },
  { name: "D 256 (the limit)", B: 1, Nq: 3, Nk: 5, heads: 2, D: 256 },
  { name: "Dv 24 != D 8", B: 2, Nq: 6, Nk: 13, heads: 2, D: 8, Dv: 24 },
  { name: "Dv 5 != D 64", B: 1, Nq: 4, Nk: 70, heads: 3, D: 64, Dv: 5 },
  { name: "one query (decode step)", B: 3, Nq: 1, Nk: 129, heads: 4, D: 16 },
  { name: "one key", B: 2, Nq: 10, Nk: 1, heads: 2, D: 8 },
  { name: "custom scale", B: 1, Nq: 12, Nk: 20, heads: 2, D: 8, scale: 0.37 },
  { name: "large logits (online softmax rescaling)", B: 1, Nq: 20, Nk: 200, heads: 2, D: 32, qStd: 8 },
  { name: "many tokens, SD-like 8 heads of 40", B: 1, Nq: 64, Nk: 64, heads: 8, D: 40 },
  { name: "causal, square", B: 2, Nq: 17, Nk: 17, heads: 2, D: 8, causal: true },
  { name: "causal, Nq < Nk (aligned to the last key)", B: 1, Nq: 5, Nk: 12, heads: 1, D: 8, causal: true },
  { name: "causal, long (crosses key tiles)", B: 1, Nq: 77, Nk: 77, heads: 2, D: 32, causal: true },
  { name: "causal, single token", B: 1, Nq: 1, Nk: 1, heads: 1, D: 4, causal: true },
  { name: "mask [Nk] (key padding)", B: 2, Nq: 7, Nk: 11, heads: 2, D: 8, mask: [11] },
  { name: "mask [Nq, Nk]", B: 2, Nq: 7, Nk: 11, heads: 2, D: 8, mask: [7, 11] },
  { name: "mask [B, 1, 1, Nk]", B: 2, Nq: 7, Nk: 11, heads: 2, D: 8, mask: [2, 1, 1, 11] },
  { name: "mask [1, heads, Nq, Nk]", B: 2, Nq: 7, Nk: 11, heads: 3, D: 5, mask: [1, 3, 7, 11] },
  { name: "mask [B, heads, Nq, Nk]", B: 2, Nq: 9, Nk: 70, heads: 2, D: 8, mask: [2, 2, 9, 70] },
  { name: "mask [B, 1, Nq, Nk] with causal", B: 2, Nq: 13, Nk: 13, heads: 2, D: 8, mask: [2, 1, 13, 13], causal: true },
];

/** Random additive mask: mostly small biases, with some keys blocked by -inf (never a whole row). */
function makeMask(shape: number[], seed: number): R.ND {
  const m = R.randn(shape, seed, 0.5);
  const Nk = shape[shape.length - 1];
  const u = R.randu(shape, seed + 1);
  return R.map(m, (v, i) => (i % Nk !== 0 && u.data[i] < 0.25 ? -Infinity : v));
}

describe("attention", () => {
  test.each(CASES.map((c) => [c.name, c] as const))("%s", async (_n, c) => {
    const Dv = c.Dv ?? c.D;
    const q = R.randn([c.B, c.Nq, c.heads * c.D], 6000 + c.Nq, c.qStd ?? 1);
    const k = R.randn([c.B, c.Nk, c.heads * c.D], 6001 + c.Nk);
    const v = R.randn([c.B, c.Nk, c.heads * Dv], 6002);
    const mask = c.mask ? makeMask(c.mask, 6003) : null;
    const got = await evalOp(() =>
      ops.attention(tensorOf(q), tensorOf(k), tensorOf(v),
        { heads: c.heads, scale: c.scale, causal: c.causal, mask: mask ? tensorOf(mask) : null }));
    const want = R.attention(q, k, v, { heads: c.heads, scale: c.scale, causal: c.causal, mask });
    expect(got.shape).toEqual([c.B, c.Nq, c.heads * Dv]);
    expectClose(got.data, want, { ...TOL, label: c.name });
  });

  test("q, k, v as slices of one fused qkv projection (rows strided by 3*C)", async () => {
    const B = 2, N = 19, heads = 2, D = 40, C = heads * D;
    const qkv = R.randn([B, N, 3 * C], 6100);
    const [q, k, v] = [0, 1, 2].map((i) => R.slice(qkv, 2, i * C, (i + 1) * C));
    const want = R.attention(q, k, v, { heads });
    const got = await evalOp(() => {
      const t = tensorOf(qkv);
      return ops.attention(ops.slice(t, 2, 0, C), ops.slice(t, 2, C, 2 * C), ops.slice(t, 2, 2 * C, 3 * C), { heads });
    });
    expectClose(got.data, want, TOL);
    const viaChunk = await evalOp(() => {
      const [a, b, c] = ops.chunk(tensorOf(qkv), 3, -1);
      return ops.attention(a, b, c, { heads, causal: true });
    });
    expectClose(viaChunk.data, R.attention(q, k, v, { heads, causal: true }), TOL);
  });

  test("cross-attention with k, v from one fused kv projection and q from a token-major view", async () => {
    const B = 2, Nq = 10, Nk = 77, heads = 4, D = 17, C = heads * D;
    const qT = R.randn([Nq, B, C], 6200);  // [N, B, C] in memory, used as [B, N, C]
    const kv = R.randn([B, Nk, 2 * C], 6201);
    const q = R.permute(qT, [1, 0, 2]), k = R.slice(kv, 2, 0, C), v = R.slice(kv, 2, C, 2 * C);
    const got = await evalOp(() => {
      const t = tensorOf(kv);
      return ops.attention(tensorOf(qT).permute([1, 0, 2]), ops.slice(t, 2, 0, C), ops.slice(t, 2, C), { heads });
    });
    expectClose(got.data, R.attention(q, k, v, { heads }), TOL);
  });

  test("a non-contiguous mask view", async () => {
    const B = 1, Nq = 6, Nk = 9, heads = 2, D = 8;
    const q = R.randn([B, Nq, heads * D], 6300), k = R.randn([B, Nk, heads * D], 6301), v = R.randn([B, Nk, heads * D], 6302);
    const mT = R.randn([Nk, Nq], 6303);  // used transposed as [Nq, Nk]
    const got = await evalOp(() =>
      ops.attention(tensorOf(q), tensorOf(k), tensorOf(v), { heads, mask: tensorOf(mT).transpose(0, 1) }));
    expectClose(got.data, R.attention(q, k, v, { heads, mask: R.transpose(mT, 0, 1) }), TOL);
  });

  test("equals softmax(q k^T * scale) v composed from matmul and softmax", async () => {
    const q = R.randn([1, 12, 8], 6400), k = R.randn([1, 15, 8], 6401), v = R.randn([1, 15, 8], 6402);
    const fused = await evalOp(() => ops.attention(tensorOf(q), tensorOf(k), tensorOf(v), { heads: 1 }));
    const composed = await evalOp(() => {
      const s = ops.mul(ops.matmul(tensorOf(q), tensorOf(k).transpose(1, 2)), 1 / Math.sqrt(8));
      return ops.matmul(ops.softmax(s, -1), tensorOf(v));
    });
    expectClose(fused.data, composed.data, TOL);
  });
});

describe("bad arguments", () => {
  const z = (s: number[]) => Tensor.zeros(s);
  const qkv = (): [Tensor, Tensor, Tensor] => [z([2, 5, 16]), z([2, 7, 16]), z([2, 7, 16])];

  test("shapes are RangeErrors naming attention", () => {
    const [q, k, v] = qkv();
    expectThrows(() => ops.attention(z([5, 16]), k, v, { heads: 2 }), RangeError, /attention.*q/);
    expectThrows(() => ops.attention(q, z([2, 7, 16, 1]), v, { heads: 2 }), RangeError, /attention.*k/);
    expectThrows(() => ops.attention(q, k, v, { heads: 3 }), RangeError, /attention.*heads/);
    expectThrows(() => ops.attention(q, k, v, { heads: 0 }), RangeError, /attention.*heads/);
    expectThrows(() => ops.attention(q, k, v, { heads: 1.5 }), RangeError, /attention.*heads/);
    expectThrows(() => ops.attention(q, z([2, 7, 8]), v, { heads: 2 }), RangeError, /attention.*channels/);
    expectThrows(() => ops.attention(q, k, z([2, 6, 16]), { heads: 2 }), RangeError, /attention.*tokens/);
    expectThrows(() => ops.attention(q, z([1, 7, 16]), z([1, 7, 16]), { heads: 2 }), RangeError, /attention.*batch/);
    expectThrows(() => ops.attention(z([1, 2, 2050]), z([1, 2, 2050]), z([1, 2, 2050]), { heads: 2 }), RangeError, /attention.*head size/);
  });

  test("masks that do not broadcast to [B, heads, Nq, Nk] are RangeErrors", () => {
    const [q, k, v] = qkv();
    expectThrows(() => ops.attention(q, k, v, { heads: 2, mask: z([6, 7]) }), RangeError, /attention.*mask/);
    expectThrows(() => ops.attention(q, k, v, { heads: 2, mask: z([3, 1, 5, 7]) }), RangeError, /attention.*mask/);
    expectThrows(() => ops.attention(q, k, v, { heads: 2, mask: z([1, 1, 1, 1, 7]) }), RangeError, /attention.*mask/);
    expectThrows(() => ops.attention(q, k, v, { heads: 2, mask: z([5, 1]) }), RangeError, /attention.*mask/);
  });

  test("dtypes, disposed and non-Tensor arguments are TypeErrors naming attention", () => {
    const [q, k, v] = qkv();
    const i32 = Tensor.fromArray(new Int32Array(160), [2, 5, 16]);
    expectThrows(() => ops.attention(i32, k, v, { heads: 2 }), TypeError, /attention.*float32/);
    expectThrows(() => ops.attention(q, k, v, { heads: 2, mask: Tensor.fromArray(new Int32Array(7), [7]) }), TypeError, /attention.*mask/);
    expectThrows(() => ops.attention(q, Tensor.zeros([2, 7, 16], { dtype: "float16" }), v, { heads: 2 }), TypeError, /attention.*k/);
    const d = z([2, 7, 16]);
    d.dispose();
    expectThrows(() => ops.attention(q, d, v, { heads: 2 }), TypeError, /attention.*disposed/);
    expectThrows(() => ops.attention(q, k, {} as Tensor, { heads: 2 }), TypeError, /attention.*v/);
    expectThrows(() => ops.attention(q, k, v, { heads: 2, causal: "yes" as unknown as boolean }), TypeError, /attention.*causal/);
    i32.dispose();
  });
});
