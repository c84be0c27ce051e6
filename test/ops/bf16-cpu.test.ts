// bfloat16 on the CPU, op by op, against float64 references computed from the same
// bf16-rounded inputs. Tolerances are a few bf16 ulps (2^-8 relative) of the output scale:
// loose enough for the rounding of the output (and of P inside attention), tight enough that
// a wrong index, a dropped tail or a float32-only path would fail.
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows } from "../helpers/check";

const bf = (x: R.ND): R.ND => R.map(x, (v) => R.roundBF16(v));
const tb = (x: R.ND): Tensor => Tensor.fromArray(Float32Array.from(x.data), x.shape, { dtype: "bfloat16" });
const maxAbs = (x: R.ND): number => x.data.reduce((m, v) => (Number.isFinite(v) ? Math.max(m, Math.abs(v)) : m), 0);
/** |got - want| <= k * 2^-8 * (max|want| + |want|): a few bf16 roundings at the output scale. */
function expectBf16(got: { data: Float32Array }, want: R.ND, label: string, k = 2): void {
  const scale = maxAbs(want);
  expectClose(got.data, want, { atol: k * 2 ** -8 * scale, rtol: k * 2 ** -8, label });
}

describe("bfloat16 attention on the CPU", () => {
  interface Case { name: string; B: number; Nq: number; Nk: number; heads: number; D: number; Dv?: number; causal?: boolean; mask?: number[]; qStd?: number }
  const CASES: Case[] = [
    { name: "SD self-attention heads of 40, Nq 33 / Nk 77 (not tile multiples)", B: 2, Nq: 33, Nk: 77, heads: 2, D: 40 },
    { name: "D 64, Nk 300 (crosses key blocks)", B: 1, Nq: 45, Nk: 300, heads: 2, D: 64 },
    { name: "D 80, cross-attention Nk 77", B: 2, Nq: 70, Nk: 77, heads: 2, D: 80 },
    { name: "D 160", B: 1, Nq: 19, Nk: 23, heads: 1, D: 160 },
    { name: "odd D 17 and odd Nk 13", B: 1, Nq: 9, Nk: 13, heads: 3, D: 17 },
    { name: "D 1, Nq 65 > Nk 3", B: 1, Nq: 65, Nk: 3, heads: 4, D: 1 },
    { name: "D 3, one key", B: 2, Nq: 10, Nk: 1, heads: 2, D: 3 },
    { name: "Dv 24 != D 8", B: 2, Nq: 6, Nk: 13, heads: 2, D: 8, Dv: 24 },
    { name: "Dv 5 != D 64", B: 1, Nq: 4, Nk: 70, heads: 3, D: 64, Dv: 5 },
    { name: "large logits (online rescaling)", B: 1, Nq: 40, Nk: 260, heads: 2, D: 32, qStd: 8 },
    { name: "causal square 77 (CLIP)", B: 1, Nq: 77, Nk: 77, heads: 2, D: 64, causal: true },
    { name: "causal Nq 5 < Nk 12", B: 1, Nq: 5, Nk: 12, heads: 1, D: 8, causal: true },
    { name: "causal Nq 40 > Nk 9 (rows that see no key)", B: 1, Nq: 40, Nk: 9, heads: 1, D: 8, causal: true },
    { name: "mask [Nk]", B: 2, Nq: 7, Nk: 11, heads: 2, D: 40, mask: [11] },
    { name: "mask [B, heads, Nq, Nk]", B: 2, Nq: 37, Nk: 70, heads: 2, D: 40, mask: [2, 2, 37, 70] },
    { name: "mask [B, 1, Nq, Nk] with causal", B: 2, Nq: 13, Nk: 13, heads: 2, D: 9, mask: [2, 1, 13, 13], causal: true },
  ];
  const makeMask = (shape: number[], seed: number): R.ND => {
    const m = R.randn(shape, seed, 0.5), u = R.randu(shape, seed + 1), Nk = shape[shape.length - 1];
    return R.map(m, (v, i) => (i % Nk !== 0 && u.data[i] < 0.25 ? -Infinity : v));
  };

  test.each(CASES.map((c) => [c.name, c] as const))("%s", async (_n, c) => {
    const Dv = c.Dv ?? c.D;
    const q = bf(R.randn([c.B, c.Nq, c.heads * c.D], 7000 + c.Nq, c.qStd ?? 1));
    const k = bf(R.randn([c.B, c.Nk, c.heads * c.D], 7001 + c.Nk));
    const v = bf(R.randn([c.B, c.Nk, c.heads * Dv], 7002));
    const mask = c.mask ? makeMask(c.mask, 7003) : null;
    const got = await evalOp(() => {
      const out = ops.attention(tb(q), tb(k), tb(v), { heads: c.heads, causal: c.causal, mask: mask ? Tensor.fromArray(Float32Array.from(mask.data), mask.shape) : null });
      expect(out.dtype).toBe("bfloat16");
      return out;
    });
    const want = R.attention(q, k, v, { heads: c.heads, causal: c.causal, mask });
    // Causal rows with no key at all are defined as 0 (as in float32).
    if (c.causal && c.Nq > c.Nk) for (let i = 0; i < want.data.length; i++) if (Number.isNaN(want.data[i])) want.data[i] = 0;
    expectBf16(got, want, c.name, 3);
  });

  test("q, k, v as strided slices of one fused bf16 qkv projection", async () => {
    const B = 2, N = 37, heads = 2, D = 40, C = heads * D;
    const qkv = bf(R.randn([B, N, 3 * C], 7100));
    const [q, k, v] = [0, 1, 2].map((i) => R.slice(qkv, 2, i * C, (i + 1) * C));
    const got = await evalOp(() => {
      const t = tb(qkv);
      return ops.attention(ops.slice(t, 2, 0, C), ops.slice(t, 2, C, 2 * C), ops.slice(t, 2, 2 * C, 3 * C), { heads });
    });
    expectBf16(got, R.attention(q, k, v, { heads }), "fused qkv", 3);
  });

  test("the fallback without AVX512_BF16 (DIFFUSEKIT_ISA=avx2) agrees with the reference", () => {
    const addon = path.resolve(__dirname, "../../build/Release/diffusekit.node");
    if (!fs.existsSync(addon)) return;
    const B = 1, Nq = 21, Nk = 19, heads = 2, D = 9, C = heads * D;
    const q = bf(R.randn([B, Nq, C], 7200)), k = bf(R.randn([B, Nk, C], 7201)), v = bf(R.randn([B, Nk, C], 7202));
    // A child process: the ISA cap is read once per process.
    const script = `
      const a = require(${JSON.stringify(addon)});
      const mk = (d, s) => a.to(a.fromBuffer(Float32Array.from(d), s, "float32", "cpu"), "cpu", "bfloat16");
      const inp = JSON.parse(process.argv[1]);
      const o = a.attention(mk(inp.q, inp.qs), mk(inp.k, inp.ks), mk(inp.v, inp.ks), inp.heads, inp.scale, true, null);
      a.to(o, "cpu", "float32").read().then((b) => process.stdout.write(JSON.stringify(Array.from(new Float32Array(b)))));`;
    const arg = JSON.stringify({ q: Array.from(q.data), k: Array.from(k.data), v: Array.from(v.data), qs: q.shape, ks: k.shape, heads, scale: 1 / Math.sqrt(D) });
    const r = spawnSync(process.execPath, ["-e", script, arg], { env: { ...process.env, DIFFUSEKIT_ISA: "avx2" }, encoding: "utf8" });
    expect(r.stderr).toBe("");
    const got = Float32Array.from(JSON.parse(r.stdout) as number[]);
    const want = R.attention(q, k, v, { heads, causal: true });  // Nq > Nk: the first rows see no key (0)
    expectBf16({ data: got }, R.map(want, (x) => (Number.isNaN(x) ? 0 : x)), "fallback", 2);
  });
});

describe("bfloat16 elementwise, norms and glue on the CPU", () => {
  test("binary ops with broadcasting, odd sizes, output dtype bf16", async () => {
    const a = bf(R.randn([3, 5, 1037], 7300)), b = bf(R.randn([5, 1], 7301)), c = bf(R.randn([3, 5, 1037], 7302));
    for (const op of ["add", "sub", "mul", "div", "maximum"] as const) {
      const got = await evalOp(() => ops[op](tb(a), tb(b)));
      expectBf16(got, R.binary(a, b, R.fn[op]), `${op} broadcast`, 1);
    }
    const flat = await evalOp(() => ops.add(tb(a), tb(c)));
    expectBf16(flat, R.binary(a, c, R.fn.add), "add flat", 1);
    const strided = await evalOp(() => ops.mul(tb(a).permute([2, 1, 0]), tb(c).permute([2, 1, 0])));
    expectBf16(strided, R.permute(R.binary(a, c, R.fn.mul), [2, 1, 0]), "mul of permuted views", 1);
    const scal = await evalOp(() => ops.mul(tb(a), 0.37));
    expectBf16(scal, R.map(a, (x) => x * 0.37), "mul scalar", 1);
    const rsub = await evalOp(() => ops.sub(2.5, tb(a)));
    expectBf16(rsub, R.map(a, (x) => 2.5 - x), "scalar - x", 1);
  });

  test("unary, clamp, axpby, geglu", async () => {
    const x = bf(R.randn([7, 333], 7400, 2));
    for (const u of ["silu", "exp", "tanh", "sigmoid", "neg", "square"] as const) {
      const got = await evalOp(() => ops.unary(u, tb(x)));
      expectBf16(got, R.map(x, R.fn[u]), u, 1);
    }
    const gelu = await evalOp(() => ops.gelu(tb(x)));
    expectBf16(gelu, R.map(x, (v) => 0.5 * v * (1 + R.erf(v / Math.SQRT2))), "gelu", 1);
    const cl = await evalOp(() => ops.clamp(tb(x), -1, 0.5));
    expectBf16(cl, R.clamp(x, -1, 0.5), "clamp", 1);
    const y = bf(R.randn([7, 333], 7401)), z = bf(R.randn([7, 333], 7402));
    const ax = await evalOp(() => ops.axpby(0.9, tb(x), -0.3, tb(y), 1.7, tb(z)));
    expectBf16(ax, R.axpby(0.9, x, -0.3, y, 1.7, z), "axpby", 1);
    const g = bf(R.randn([5, 2 * 1283], 7403));
    const gg = await evalOp(() => ops.geglu(tb(g)));
    expectBf16(gg, R.geglu(g), "geglu", 1);
  });

  test("geglu: C of 1, 15, 17 (vector tails), the negative tail to relative accuracy", async () => {
    for (const [rows, C] of [[3, 1], [5, 15], [7, 17], [2, 40]]) {
      const x = bf(R.randn([rows, 2 * C], 7410 + C, 4));
      const got = await evalOp(() => ops.geglu(tb(x)));
      // one bf16 rounding of each output value: relative, so tiny x Phi(x) at g << 0 must be right
      expectClose(got.data, R.geglu(x), { atol: 1e-37, rtol: 2 ** -8, label: `geglu [${rows}, ${2 * C}]` });
    }
  });

  test("groupNorm (+SiLU), layerNorm, softmax: float32 statistics", async () => {
    const x = bf(R.randn([2, 9, 7, 96], 7500, 3, 20));  // large mean: stats must not be bf16
    const gamma = bf(R.randn([96], 7501)), beta = bf(R.randn([96], 7502));
    for (const silu of [false, true]) {
      const got = await evalOp(() => ops.groupNorm(tb(x), 32, { weight: tb(gamma), bias: tb(beta), silu }));
      expectBf16(got, R.groupNorm(x, 32, { gamma, beta, silu }), `groupNorm silu=${silu}`, 2);
    }
    const big = bf(R.randn([1, 300, 64], 7503));  // more rows than one conversion chunk
    expectBf16(await evalOp(() => ops.groupNorm(tb(big), 4)), R.groupNorm(big, 4), "groupNorm long", 2);
    const l = bf(R.randn([3, 13, 771], 7504, 2, 5));
    const lg = bf(R.randn([771], 7505)), lb = bf(R.randn([771], 7506));
    expectBf16(await evalOp(() => ops.layerNorm(tb(l), { weight: tb(lg), bias: tb(lb) })), R.layerNorm(l, { gamma: lg, beta: lb }), "layerNorm", 2);
    const s = bf(R.randn([11, 77], 7507, 4));
    expectBf16(await evalOp(() => ops.softmax(tb(s), -1)), R.softmax(s, -1), "softmax", 2);
  });

  test("groupNorm read and rounded in registers: C of 17, 51, 83 (vector tails), many chunks, no gamma", async () => {
    for (const [shape, G, affine] of [[[2, 600, 17], 1, true], [[1, 37, 51], 3, true], [[3, 5, 83], 83, false], [[1, 2, 40, 200], 4, true]] as const) {
      const C = shape[shape.length - 1];
      const x = bf(R.randn([...shape], 7550 + C, 2, -3));
      const gamma = affine ? bf(R.randn([C], 7551)) : null, beta = affine ? bf(R.randn([C], 7552)) : null;
      for (const silu of [false, true]) {
        const got = await evalOp(() => ops.groupNorm(tb(x), G, { weight: gamma ? tb(gamma) : undefined, bias: beta ? tb(beta) : undefined, silu }));
        expectBf16(got, R.groupNorm(x, G, { gamma, beta, silu }), `groupNorm [${shape}] G ${G} silu=${silu}`, 1);
      }
    }
  });

  test("upsample, concat, slice, contiguous, embedding, timestepEmbedding, reduce, cast", async () => {
    const x = bf(R.randn([2, 3, 5, 7], 7600));
    expect((await evalOp(() => ops.upsampleNearest2x(tb(x)))).data).toEqual(Float32Array.from(R.upsampleNearest2x(x).data));
    const y = bf(R.randn([2, 3, 4, 7], 7601));
    expect((await evalOp(() => ops.concat([tb(x), tb(y)], 2))).data).toEqual(Float32Array.from(R.concat([x, y], 2).data));
    expect((await evalOp(() => ops.slice(tb(x), 3, 1, 6, 2).contiguous())).data).toEqual(Float32Array.from(R.slice(x, 3, 1, 6, 2).data));
    const table = bf(R.randn([11, 9], 7602));
    const ids = [3, 0, 10, 3, 7];
    const emb = await evalOp(() => ops.embedding(Tensor.fromArray(new Int32Array(ids), [5]), tb(table)));
    expect(emb.data).toEqual(Float32Array.from(R.embedding(ids, [5], table).data));
    const tOut = await evalOp(() => {
      const e = ops.timestepEmbedding(Tensor.fromArray(new Float32Array([0, 1, 999]), [3]).to("cpu", "bfloat16"), 321, { flipSinToCos: true, downscaleFreqShift: 0 });
      expect(e.dtype).toBe("bfloat16");
      return e;
    });
    // 999 is not a bf16 value: the op sees 1000; sinusoids in float32, rounded once.
    expectBf16(tOut, R.timestepEmbedding([0, 1, 1000], 321, { flipSinToCos: true, downscaleFreqShift: 0 }), "timestepEmbedding", 1);
    const r = bf(R.randn([3, 17, 5], 7603));
    for (const op of ["sum", "mean", "max"] as const)
      expectBf16(await evalOp(() => ops[op](tb(r), 1)), R.reduce(op, r, 1), `reduce ${op}`, 1);
    const c = R.randn([1001], 7604);
    const cast = await evalOp(() => Tensor.fromArray(Float32Array.from(c.data), [1001]).to("cpu", "bfloat16"));
    expect(cast.data).toEqual(Float32Array.from(c.data, (v) => R.roundBF16(v)));
    const nan = await evalOp(() => Tensor.fromArray(new Float32Array([NaN, Infinity, -Infinity, 3.3895313892515355e38, 1e-40]), [5]).to("cpu", "bfloat16"));
    expect(Array.from(nan.data)).toEqual([NaN, Infinity, -Infinity, 3.3895313892515355e38, R.roundBF16(1e-40)]);
  });

  test("float16 on the CPU is still a clear TypeError", () => {
    const h = Tensor.zeros([2, 3], { dtype: "float16" });
    expectThrows(() => ops.softmax(h, -1), TypeError, /softmax.*float32 or bfloat16 on cpu/);
    expectThrows(() => ops.add(h, h), TypeError, /add.*float16/);
    h.dispose();
  });
});
