// CUDA-vs-CPU parity over every op: the same random inputs run on the CPU in float32 and on a
// GPU in float32, float16 and bfloat16; results are compared with dtype-aware tolerances.
// A plain Node script over dist/ (no dev dependencies): node dist/check/cuda-parity.js [--json out.json]
import * as fs from "fs";
import { devices } from "../devices";
import { withExactCpuReference } from "./exact-cpu-reference";
import * as ops from "../ops";
import { Tensor, tidy, type DType } from "../tensor";

type Op = (xs: Tensor[]) => Tensor;
interface Case {
  name: string;
  shapes: number[][];
  run: Op;
  /** int inputs: index -> vocabulary size (values drawn in [0, V)) */
  ints?: Record<number, number>;
  /** inputs that must be positive (log, sqrt, ...) */
  positive?: boolean;
  /** the op only supports float32 on the GPU too (e.g. timestep embedding) */
  f32only?: boolean;
  /** scale the relative tolerance (long reductions in half precision) */
  tolScale?: number;
  /** inputs that stay float32 whatever dtype is tested (e.g. attention masks) */
  keepF32?: number[];
}

const tol: Record<string, { atol: number; rtol: number }> = {
  float32: { atol: 2e-5, rtol: 2e-4 },
  float16: { atol: 2e-3, rtol: 1e-2 },
  bfloat16: { atol: 1e-2, rtol: 4e-2 },
};

function cases(): Case[] {
  const c: Case[] = [];
  const add = (name: string, shapes: number[][], run: Op, extra: Partial<Case> = {}) => c.push({ name, shapes, run, ...extra });
  // elementwise
  add("add broadcast [3,17,33]+[33]", [[3, 17, 33], [33]], ([a, b]) => ops.add(a, b));
  add("mul broadcast [4,1,7]*[1,5,7]", [[4, 1, 7], [1, 5, 7]], ([a, b]) => ops.mul(a, b));
  add("sub transposed view", [[33, 17], [17, 33]], ([a, b]) => ops.sub(a.transpose(0, 1), b));
  add("div", [[1000]], ([a]) => ops.div(a, ops.add(ops.abs(a), 1)));
  add("scalar ops", [[1023]], ([a]) => ops.sub(3, ops.mul(a, 0.5)));
  for (const u of ["neg", "exp", "sqrt", "rsqrt", "abs", "square", "sin", "cos", "reciprocal"] as const)
    add(`unary ${u}`, [[2049]], ([a]) => (ops as unknown as Record<string, Op1>)[u](u === "exp" ? a : ops.add(ops.abs(a), 0.5)));
  add("log", [[777]], ([a]) => ops.log(ops.add(ops.abs(a), 0.1)));
  add("silu", [[4097]], ([a]) => ops.silu(a));
  add("sigmoid", [[4097]], ([a]) => ops.sigmoid(a));
  add("tanh", [[4097]], ([a]) => ops.tanh(a));
  add("gelu erf", [[4097]], ([a]) => ops.gelu(a));
  add("gelu tanh", [[4097]], ([a]) => ops.gelu(a, { approximate: "tanh" }));
  add("quick_gelu", [[4097]], ([a]) => ops.quickGelu(a));
  add("geglu", [[5, 7, 2 * 40]], ([a]) => ops.geglu(a));
  add("clamp", [[999]], ([a]) => ops.clamp(a, -0.5, 0.7));
  add("axpby 3 terms", [[3, 4, 17, 9], [3, 4, 17, 9], [3, 4, 17, 9]], ([x, y, z]) => ops.axpby(0.7, x, -1.3, y, 0.25, z));
  add("axpby 2 terms", [[12345], [12345]], ([x, y]) => ops.axpby(1.5, x, 0.5, y));
  add("softmax", [[37, 77]], ([a]) => ops.softmax(ops.mul(a, 3)));
  add("softmax 4096", [[8, 4096]], ([a]) => ops.softmax(a));
  // shape / copy
  add("permute contiguous", [[2, 5, 7, 3]], ([a]) => a.permute([0, 3, 1, 2]).contiguous());
  add("slice step", [[9, 20]], ([a]) => ops.slice(a, 1, 3, 19, 3).contiguous());
  add("concat dim1", [[2, 3, 5], [2, 4, 5]], ([a, b]) => ops.concat([a, b], 1));
  add("upsample 2x", [[2, 5, 7, 6]], ([a]) => ops.upsampleNearest2x(a));
  add("embedding", [[3, 77], [101, 24]], ([ids, t]) => ops.embedding(ids, t), { ints: { 0: 101 } });
  add("timestep embedding", [[5]], ([t]) => ops.timestepEmbedding(ops.mul(ops.abs(t), 300), 320, { flipSinToCos: true, downscaleFreqShift: 0 }), { f32only: true });
  // reductions
  add("sum dim", [[7, 33, 5]], ([a]) => ops.sum(a, 1), { tolScale: 4 });
  add("mean all", [[64, 65]], ([a]) => ops.mean(a), { tolScale: 4 });
  add("max keepdim", [[6, 7, 8]], ([a]) => ops.max(a, -1, true));
  // linear algebra
  for (const [m, n, k] of [[1, 1, 1], [17, 33, 65], [128, 256, 64], [77, 320, 768], [300, 129, 257]])
    add(`matmul ${m}x${k} @ ${k}x${n}`, [[m, k], [k, n]], ([a, b]) => ops.matmul(a, b), { tolScale: k > 256 ? 2 : 1 });
  add("matmul batched transB view", [[4, 33, 40], [4, 29, 40]], ([a, b]) => ops.matmul(a, b.transpose(1, 2)));
  add("matmul broadcast rhs", [[3, 65, 24], [24, 31]], ([a, b]) => ops.matmul(a, b));
  add("linear bias residual", [[2, 77, 96], [160, 96], [160], [2, 77, 160]], ([x, w, b, r]) => ops.linear(x, w, b, r));
  add("linear 8192x320x320", [[8192, 320], [320, 320], [320]], ([x, w, b]) => ops.linear(x, w, b), { tolScale: 2 });
  add("linear 256x1280x1280", [[256, 1280], [1280, 1280]], ([x, w]) => ops.linear(x, w), { tolScale: 3 });
  // convolution
  add("conv 3x3 pad1", [[2, 16, 16, 32], [48, 3, 3, 32], [48]], ([x, w, b]) => ops.conv2d(x, w, { padding: 1, bias: b }), { tolScale: 2 });
  add("conv 3x3 stride2", [[1, 17, 15, 16], [24, 3, 3, 16]], ([x, w]) => ops.conv2d(x, w, { padding: 1, stride: 2 }));
  add("conv 1x1 residual", [[2, 8, 8, 64], [32, 1, 1, 64], [2, 8, 8, 32]], ([x, w, r]) => ops.conv2d(x, w, { residual: r }));
  add("conv_in 4ch", [[1, 16, 16, 4], [32, 3, 3, 4], [32]], ([x, w, b]) => ops.conv2d(x, w, { padding: 1, bias: b }));
  add("conv 3ch dilation2", [[1, 20, 20, 3], [8, 3, 3, 3]], ([x, w]) => ops.conv2d(x, w, { padding: 2, dilation: 2 }));
  add("conv 64x64x320", [[1, 64, 64, 320], [320, 3, 3, 320], [320]], ([x, w, b]) => ops.conv2d(x, w, { padding: 1, bias: b }), { tolScale: 3 });
  // normalisation
  add("group norm silu", [[2, 9, 11, 64], [64], [64]], ([x, g, b]) => ops.groupNorm(x, 32, { weight: g, bias: b, silu: true }));
  add("group norm 64x64x320", [[2, 64, 64, 320], [320], [320]], ([x, g, b]) => ops.groupNorm(x, 32, { weight: g, bias: b, eps: 1e-6 }));
  add("layer norm", [[3, 77, 768], [768], [768]], ([x, g, b]) => ops.layerNorm(x, { weight: g, bias: b }));
  // attention
  const att = (B: number, Nq: number, Nk: number, H: number, D: number, opts: { causal?: boolean } = {}): Case => ({
    name: `attention B${B} Nq${Nq} Nk${Nk} H${H} D${D}${opts.causal ? " causal" : ""}`,
    shapes: [[B, Nq, H * D], [B, Nk, H * D], [B, Nk, H * D]],
    run: ([q, k, v]) => ops.attention(q, k, v, { heads: H, causal: opts.causal }),
    tolScale: 2,
  });
  c.push(att(2, 4096, 4096, 8, 40), att(2, 1024, 1024, 8, 80), att(2, 4096, 77, 8, 40), att(2, 256, 256, 8, 160),
    att(1, 77, 77, 12, 64, { causal: true }), att(2, 33, 17, 3, 17), att(1, 5, 9, 2, 3), att(2, 100, 100, 4, 64));
  add("attention with mask", [[2, 20, 32], [2, 30, 32], [2, 30, 32], [2, 1, 1, 30]], ([q, k, v, m]) => ops.attention(q, k, v, { heads: 4, mask: m }), { keepF32: [3] });
  add("attention q,k,v slices of fused qkv", [[2, 64, 3 * 80]], ([qkv]) => {
    const [q, k, v] = ops.split(qkv, 80, 2);
    return ops.attention(q, k, v, { heads: 2 });
  });
  return c;
}
type Op1 = (x: Tensor) => Tensor;

// mulberry32: a small seeded PRNG for inputs
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeInputs(c: Case, seed: number): Tensor[] {
  const r = rng(seed);
  return c.shapes.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    if (c.ints && c.ints[i] !== undefined) {
      const v = new Int32Array(n);
      for (let j = 0; j < n; j++) v[j] = Math.floor(r() * c.ints[i]);
      return Tensor.fromArray(v, shape);
    }
    const v = new Float32Array(n);
    for (let j = 0; j < n; j++) v[j] = (r() * 2 - 1) * 1.5;
    return Tensor.fromArray(v, shape);
  });
}

export interface ParityResult { name: string; dtype: DType; ok: boolean; maxAbs: number; maxRel: number; detail?: string }

async function runCase(c: Case, dtype: DType, device: string): Promise<ParityResult> {
  const inputs = makeInputs(c, c.name.length * 7919 + 17);
  try {
    const ref = tidy(() => c.run(inputs));
    // Round the inputs to the tested dtype on the CPU side too, so only the op's error is measured.
    const devInputs = inputs.map((t, i) =>
      t.dtype === "int32" ? t : t.to(device, c.keepF32?.includes(i) ? "float32" : dtype));
    const refIn = devInputs.map((t) => (t.dtype === dtype && dtype !== "float32" ? t.to("cpu", "float32") : null));
    const ref2 = refIn.some((t) => t) ? tidy(() => c.run(refIn.map((t, i) => t ?? inputs[i]))) : null;
    const out = tidy(() => c.run(devInputs));
    const [a, b] = await Promise.all([out.toFloat32Array(), (ref2 ?? ref).toFloat32Array()]);
    for (const t of [ref, ref2, out, ...devInputs, ...refIn]) if (t && !inputs.includes(t)) t.dispose();
    const { atol, rtol } = tol[dtype];
    const scale = c.tolScale ?? 1;
    let maxAbs = 0, maxRel = 0, bad = -1;
    if (a.length !== b.length) return { name: c.name, dtype, ok: false, maxAbs: NaN, maxRel: NaN, detail: `length ${a.length} vs ${b.length}` };
    let refMax = 0;
    for (let i = 0; i < b.length; i++) refMax = Math.max(refMax, Math.abs(b[i]));
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i] - b[i]);
      if (!(d <= (atol * Math.max(1, refMax * 0.1) + rtol * Math.abs(b[i])) * scale) && bad < 0) bad = i;
      if (!(d <= maxAbs)) maxAbs = d;
      const rel = d / Math.max(Math.abs(b[i]), 1e-3);
      if (rel > maxRel) maxRel = rel;
    }
    return { name: c.name, dtype, ok: bad < 0, maxAbs, maxRel, detail: bad >= 0 ? `first mismatch at ${bad}: gpu ${a[bad]} vs cpu ${b[bad]}` : undefined };
  } catch (e) {
    return { name: c.name, dtype, ok: false, maxAbs: NaN, maxRel: NaN, detail: `threw: ${(e as Error).message}` };
  } finally {
    for (const t of inputs) t.dispose();
  }
}

export async function runParity(device = "cuda:0", log = console.log, dtypes: DType[] = ["float32", "float16", "bfloat16"]): Promise<ParityResult[]> {
  const results: ParityResult[] = [];
  for (const c of cases()) {
    for (const dtype of dtypes) {
      if (c.f32only && dtype !== "float32") continue;
      const r = await runCase(c, dtype, device);
      results.push(r);
      log(`${r.ok ? "ok  " : "FAIL"} ${dtype.padEnd(8)} ${c.name.padEnd(44)} maxAbs ${r.maxAbs.toExponential(2)} maxRel ${r.maxRel.toExponential(2)}${r.detail ? "  " + r.detail : ""}`);
    }
  }
  const failed = results.filter((r) => !r.ok).length;
  log(`${results.length - failed} passed, ${failed} failed`);
  return results;
}

if (require.main === module) {
  const jsonAt = process.argv.indexOf("--json");
  // --self-test runs the harness CPU-vs-CPU in float32 (checks the script itself, no GPU needed)
  const selfTest = process.argv.includes("--self-test");
  const cuda = devices().find((d) => d.type === "cuda");
  if (!cuda && !selfTest) {
    console.log("cuda-parity: no CUDA device answered; nothing to check");
    process.exit(0);
  }
  withExactCpuReference(() => runParity(selfTest ? "cpu" : "cuda:0", console.log, selfTest ? ["float32"] : undefined)).then((results) => {
    if (jsonAt > 0) fs.writeFileSync(process.argv[jsonAt + 1], JSON.stringify({ device: cuda, results }, null, 1));
    process.exitCode = results.every((r) => r.ok) ? 0 : 1;
  }, (e) => { console.error(e); process.exitCode = 1; });
}
