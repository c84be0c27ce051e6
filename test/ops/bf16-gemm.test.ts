// bfloat16 matmul, linear and conv2d on the CPU against float64 loops over the same bf16-rounded
// inputs. The kernels sum in fp32 and round once on store (nearest even), so the error bound is
// half a bf16 ulp of the result (2^-8 relative) plus fp32 summation error. Shapes are chosen off
// the 14 x 32 tile, the 768-element K block (several blocks: fp32 running sums, in both walk
// orders of gemm_bf16.cc), odd K (a zero
// padded last pair), the few-rows path (M <= 4) and the threading threshold. The fp32 fallback
// (DIFFUSEKIT_ISA=avx2) runs in a child process and must give the same answers.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor, devices, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";
import { ROOT, assertBuilt, runNode } from "../cli/run";

/** Rounds to bfloat16, nearest even, by bits (R.roundBF16 is exact but slow for millions of values). */
function bf(x: R.ND): R.ND {
  const f = Float32Array.from(x.data), u = new Uint32Array(f.buffer);
  for (let i = 0; i < u.length; i++) u[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16;  // finite inputs only
  return R.nd(f, x.shape);
}
/** Unit-variance uniform values by xorshift32 (R.randn is too slow for the multi-million-element case). */
function fastRandBf(shape: number[], seed: number, std = 1): R.ND {
  const f = new Float32Array(R.numel(shape));
  let s = seed | 1;
  for (let i = 0; i < f.length; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    f[i] = ((s >>> 0) / 4294967296 * 2 - 1) * Math.sqrt(3) * std;
  }
  return bf(R.nd(f, shape));
}
const randBf = (shape: number[], seed: number, std = 1): R.ND =>
  R.numel(shape) > 1e6 ? fastRandBf(shape, seed, std) : bf(R.randn(shape, seed, std));
const tensorBf = (x: R.ND): Tensor => Tensor.fromArray(Float32Array.from(x.data), x.shape, { dtype: "bfloat16" });
/** Half a bf16 ulp of the result (2^-8 relative), plus fp32 summation over K terms. */
const tol = (K: number) => ({ rtol: 2 ** -8 * 1.0001, atol: 1e-5 * Math.sqrt(Math.max(K, 1)) });

async function bfOut(build: () => Tensor): Promise<{ data: Float32Array; shape: number[] }> {
  return evalOp(() => {
    const out = build();
    expect(out.dtype).toBe("bfloat16");
    return out;
  });
}

test("the test's bf16 rounding matches the reference helper", () => {
  const x = R.randn([4096], 8999, 10);
  expectClose(bf(x).data, R.map(x, R.roundBF16), { atol: 0, rtol: 0 });
});

test("the CPU reports whether vdpbf16ps is used (the other path is covered by the fallback test)", () => {
  const cpu = devices().find((d) => d.type === "cpu") as { isa: string };
  expect(typeof cpu.isa).toBe("string");
});

describe("bf16 matmul", () => {
  test.each([
    [[1, 1], [1, 1]],
    [[3, 7], [7, 5]],           // few rows: dot-product path, B row-major
    [[17, 33], [33, 65]],
    [[65, 129], [129, 31]],
    [[1, 257], [257, 1]],
    [[130, 1], [1, 70]],        // K = 1: one padded pair
    [[33, 300], [300, 47]],
    [[97, 1000], [1000, 19]],   // two K blocks
    [[29, 1601], [1601, 70]],   // three K blocks, the last odd
    [[200, 301], [301, 90]],    // threaded, odd K
    [[2, 3, 17, 9], [2, 3, 9, 5]],
    [[4, 7, 9], [9, 5]],        // unbatched b broadcast
    [[7, 9], [3, 9, 5]],        // unbatched a broadcast
    [[3, 31, 67], [3, 67, 35]],
  ])("[%j] @ [%j]", async (sa, sb) => {
    const a = randBf(sa, 9000 + sa[0]), b = randBf(sb, 9100 + sb[sb.length - 1]);
    const got = await bfOut(() => ops.matmul(tensorBf(a), tensorBf(b)));
    const want = R.matmul(a, b);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, { ...tol(sa[sa.length - 1]), label: `[${sa}] @ [${sb}]` });
  });

  test.each([
    ["a transposed", true, false, 37, 45, 29],
    ["b transposed (nn.Linear weight)", false, true, 37, 45, 29],
    ["both transposed", true, true, 19, 8, 65],
    ["both transposed, odd K over two blocks", true, true, 23, 801, 40],
    ["b transposed, few rows", false, true, 3, 77, 20],
    ["both transposed, vector-like", true, true, 1, 33, 1],
  ])("%s", async (_n, ta, tb, M, K, N) => {
    const a = ta ? randBf([K as number, M as number], 9200) : randBf([M as number, K as number], 9200);
    const b = tb ? randBf([N as number, K as number], 9201) : randBf([K as number, N as number], 9201);
    const got = await bfOut(() => {
      const A = ta ? tensorBf(a).transpose(0, 1) : tensorBf(a);
      const B = tb ? tensorBf(b).transpose(0, 1) : tensorBf(b);
      return ops.matmul(A, B);
    });
    const want = R.matmul(ta ? R.transpose(a, 0, 1) : a, tb ? R.transpose(b, 0, 1) : b);
    expectClose(got.data, want, tol(K as number));
  });

  test("batched q @ k^T with k a transposed view; sliced operands (ld > cols)", async () => {
    const q = randBf([3, 17, 40], 9300), k = randBf([3, 23, 40], 9301);
    const got = await bfOut(() => ops.matmul(tensorBf(q), tensorBf(k).transpose(1, 2)));
    expectClose(got.data, R.matmul(q, R.transpose(k, 1, 2)), tol(40));
    const a = randBf([21, 50], 9302), b = randBf([33, 70], 9303);
    const got2 = await bfOut(() => ops.matmul(ops.slice(tensorBf(a), 1, 7, 40), ops.slice(tensorBf(b), 1, 3, 68)));
    expectClose(got2.data, R.matmul(R.slice(a, 1, 7, 40), R.slice(b, 1, 3, 68)), tol(33));
  });

  test("K = 0 gives zeros; mixed dtypes are refused", async () => {
    const got = await bfOut(() => ops.matmul(Tensor.zeros([3, 0], { dtype: "bfloat16" }), Tensor.zeros([0, 4], { dtype: "bfloat16" })));
    expectClose(got.data, new Array(12).fill(0), { atol: 0, rtol: 0 });
    expectThrows(() => ops.matmul(Tensor.zeros([2, 3], { dtype: "bfloat16" }), Tensor.zeros([3, 2])), TypeError, "bfloat16");
    expectThrows(() => ops.matmul(Tensor.zeros([2, 3], { dtype: "float16" }), Tensor.zeros([3, 2], { dtype: "float16" })), TypeError, "float32 or bfloat16 on cpu");
  });
});

describe("bf16 linear", () => {
  test.each([
    ["bias + residual", [5, 37], 29, true, true],
    ["one row (dot products), bias + residual", [1, 77], 33, true, true],
    ["batched tokens, bias", [2, 3, 300], 65, true, false],
    ["odd K over two blocks, bias + residual, threaded", [300, 1001], 70, true, true],
    ["no bias, residual only", [46, 64], 96, false, true],
    ["K = 4001, N = 1100: too big a whole-K B slab, running sums per rectangle", [5, 4001], 1100, true, true],
  ])("%s", async (_n, xs, outF, withBias, withRes) => {
    const xShape = xs as number[], K = xShape[xShape.length - 1];
    const x = randBf(xShape, 9400 + K), w = randBf([outF as number, K], 9401, 1 / Math.sqrt(K));
    const bias = withBias ? randBf([outF as number], 9402) : null;
    const res = withRes ? randBf([...xShape.slice(0, -1), outF as number], 9403) : null;
    const got = await bfOut(() => ops.linear(tensorBf(x), tensorBf(w), bias ? tensorBf(bias) : null, res ? tensorBf(res) : null));
    expectClose(got.data, R.linear(x, w, bias, res), { ...tol(K), label: String(_n) });
  });

  test("a float32 bias with bfloat16 weights is refused", () => {
    expectThrows(() => ops.linear(Tensor.zeros([2, 3], { dtype: "bfloat16" }), Tensor.zeros([4, 3], { dtype: "bfloat16" }), Tensor.zeros([4])), TypeError, "bias");
  });
});

interface ConvCase { name: string; x: number[]; w: number[]; stride?: [number, number]; padding?: [number, number]; dilation?: [number, number]; bias?: boolean; residual?: boolean }
const convCases: ConvCase[] = [
  { name: "3x3 pad 1, C = 3 (K = 27: odd)", x: [1, 11, 13, 3], w: [5, 3, 3, 3], padding: [1, 1], bias: true },
  { name: "3x3 stride 2 pad 1, bias + residual", x: [2, 9, 10, 20], w: [40, 3, 3, 20], stride: [2, 2], padding: [1, 1], bias: true, residual: true },
  { name: "1x1 stride 1 (plain GEMM), bias + residual", x: [2, 7, 9, 33], w: [47, 1, 1, 33], bias: true, residual: true },
  { name: "1x1 stride 2 (patch gather)", x: [1, 9, 9, 16], w: [24, 1, 1, 16], stride: [2, 2] },
  { name: "3x3 dilation 2, asymmetric padding", x: [1, 12, 10, 7], w: [9, 3, 3, 7], padding: [2, 1], dilation: [2, 2], bias: true },
  { name: "3x3, 100 channels (two K blocks), residual, threaded", x: [2, 10, 10, 100], w: [70, 3, 3, 100], padding: [1, 1], residual: true },
];

function convRef(c: ConvCase, seed: number) {
  const K = c.w[0], C = c.x[3];
  const x = randBf(c.x, seed), w = randBf(c.w, seed + 1, 1 / Math.sqrt(C * c.w[1] * c.w[2]));
  const bias = c.bias ? randBf([K], seed + 2) : null;
  const shapeOnly = R.conv2dNHWC(R.randn([c.x[0], c.x[1], c.x[2], 1], 1), R.randn([1, c.w[1], c.w[2], 1], 1), { stride: c.stride, padding: c.padding, dilation: c.dilation });
  const res = c.residual ? randBf([...shapeOnly.shape.slice(0, 3), K], seed + 3) : null;
  const want = R.conv2dNHWC(x, w, { stride: c.stride, padding: c.padding, dilation: c.dilation, bias, residual: res });
  return { x, w, bias, res, want };
}

// algo "direct": these check the implicit GEMM (Winograd has its own suite and tolerance)
describe("bf16 conv2d", () => {
  test.each(convCases.map((c) => [c.name, c] as const))("%s", async (_n, c) => {
    const { x, w, bias, res, want } = convRef(c, 9500);
    const got = await bfOut(() =>
      ops.conv2d(tensorBf(x), tensorBf(w), { stride: c.stride, padding: c.padding, dilation: c.dilation, bias: bias ? tensorBf(bias) : undefined, residual: res ? tensorBf(res) : undefined, algo: "direct" }),
    );
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, { ...tol(c.w[1] * c.w[2] * c.x[3]), label: c.name, shape: want.shape });
  });

  test("the result is rounded once: bf16 output of exactly representable sums is exact", async () => {
    // small integers: every product and sum is exact in fp32 and in bf16 (< 256)
    const x = R.map(R.randu([1, 5, 5, 6], 9600, 0, 4), Math.floor), w = R.map(R.randu([3, 3, 3, 6], 9601, -2, 2), Math.floor);
    const got = await bfOut(() => ops.conv2d(tensorBf(x), tensorBf(w), { padding: 1 }));
    const want = R.conv2dNHWC(x, w, { padding: [1, 1] });
    expectClose(got.data, R.map(want, R.roundBF16), { atol: 0, rtol: 0 });
    // and a float32 reference of the same ops agrees
    const f32 = await evalOp(() => ops.conv2d(tensorOf(x), tensorOf(w), { padding: 1 }));
    expectClose(got.data, R.map(R.nd(f32.data, f32.shape), R.roundBF16), { atol: 0, rtol: 0 });
  });
});

describe("bf16 without AVX512_BF16 (DIFFUSEKIT_ISA=avx2: converted to fp32)", () => {
  test("matmul, linear and conv2d give the same answers in a child process", async () => {
    assertBuilt();
    const a = randBf([37, 801], 9700), b = randBf([801, 45], 9701);
    const x = randBf([2, 3, 300], 9702), w = randBf([65, 300], 9703, 0.05), lb = randBf([65], 9704), lr = randBf([2, 3, 65], 9705);
    const cc = convCases[0], cb = convCases[1];
    const c0 = convRef(cc, 9710), c1 = convRef(cb, 9720);
    const arr = (t: R.ND | null) => (t ? { data: Array.from(t.data), shape: t.shape } : null);
    const input = { a: arr(a), b: arr(b), x: arr(x), w: arr(w), lb: arr(lb), lr: arr(lr),
      c0: { x: arr(c0.x), w: arr(c0.w), bias: arr(c0.bias), padding: cc.padding },
      c1: { x: arr(c1.x), w: arr(c1.w), bias: arr(c1.bias), res: arr(c1.res), stride: cb.stride, padding: cb.padding } };
    const file = path.join(os.tmpdir(), `dk-bf16-fallback-${process.pid}.json`);
    fs.writeFileSync(file, JSON.stringify(input));
    const script = `
      const { Tensor, ops, devices } = require(${JSON.stringify(path.join(ROOT, "dist", "index.js"))});
      const inp = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const t = (v) => v ? Tensor.fromArray(Float32Array.from(v.data), v.shape, { dtype: "bfloat16" }) : undefined;
      (async () => {
        const outs = [ops.matmul(t(inp.a), t(inp.b)), ops.linear(t(inp.x), t(inp.w), t(inp.lb), t(inp.lr)),
          ops.conv2d(t(inp.c0.x), t(inp.c0.w), { bias: t(inp.c0.bias), padding: inp.c0.padding }),
          ops.conv2d(t(inp.c1.x), t(inp.c1.w), { bias: t(inp.c1.bias), residual: t(inp.c1.res), stride: inp.c1.stride, padding: inp.c1.padding })];
        const data = [];
        for (const o of outs) { if (o.dtype !== "bfloat16") throw new Error("dtype " + o.dtype); data.push(Array.from(await o.toFloat32Array())); }
        process.stdout.write(JSON.stringify({ isa: devices().find((d) => d.type === "cpu").isa, data }));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    let r;
    try {
      r = runNode("-e", [script, file], { env: { DIFFUSEKIT_ISA: "avx2" }, timeoutMs: 60_000 });
    } finally {
      fs.unlinkSync(file);
    }
    if (r.code !== 0) throw new Error(`child failed (${r.code}): ${r.stderr}`);
    const out = JSON.parse(r.stdout) as { isa: string; data: number[][] };
    expect(out.isa).not.toContain("bf16");
    const wants = [R.matmul(a, b), R.linear(x, w, lb, lr), c0.want, c1.want];
    const Ks = [801, 300, 27, 180];
    const here = [
      await bfOut(() => ops.matmul(tensorBf(a), tensorBf(b))),
      await bfOut(() => ops.linear(tensorBf(x), tensorBf(w), tensorBf(lb), tensorBf(lr))),
      await bfOut(() => ops.conv2d(tensorBf(c0.x), tensorBf(c0.w), { bias: tensorBf(c0.bias!), padding: cc.padding })),
      await bfOut(() => ops.conv2d(tensorBf(c1.x), tensorBf(c1.w), { bias: tensorBf(c1.bias!), residual: tensorBf(c1.res!), stride: cb.stride, padding: cb.padding })),
    ];
    for (let i = 0; i < 4; i++) {
      expectClose(out.data[i], wants[i], { ...tol(Ks[i]), label: `fallback case ${i}` });
      // the two paths differ only in fp32 summation order: at most one bf16 ulp apart
      expectClose(out.data[i], here[i].data, { rtol: 2 ** -7, atol: 1e-5 * Math.sqrt(Ks[i]), label: `fallback vs in-process case ${i}` });
    }
  });
});
