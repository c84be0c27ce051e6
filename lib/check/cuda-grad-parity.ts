// CUDA-vs-CPU parity of the training kernels: for every case (grad-parity-cases.ts) the same
// random float32 inputs run on the CPU and on a GPU, the same loss sum(out * W) is
// backpropagated, and every input's gradient is compared; optimiser cases compare their
// results. Tolerance atol 2e-5 (times max(1, 0.1 max|ref|)) + rtol 2e-4, times the case's tolScale.
// A plain Node script over dist/ (no dev dependencies):
//   node dist/check/cuda-grad-parity.js [--json out.json] [--self-test]
// (--self-test runs the harness CPU against CPU: it checks the script and the cases, no GPU.)
import * as fs from "fs";
import { devices } from "../devices";
import { withExactCpuReference } from "./exact-cpu-reference";
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { backward } from "../autograd";
import { gradCases, type GradCase } from "./grad-parity-cases";

export type { GradCase } from "./grad-parity-cases";

export interface GradParityResult { name: string; ok: boolean; maxAbs: number; maxRel: number; compared: number; detail?: string }

const ATOL = 2e-5, RTOL = 2e-4;

// mulberry32: a small seeded PRNG for inputs and loss weights
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

function seedOf(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** The case's inputs on `device` (the same values for every device; integer inputs stay on the cpu unless idsOnDevice). */
function makeInputs(c: GradCase, device: string): Tensor[] {
  const r = rng(seedOf(c.name));
  return c.shapes.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const int = c.ints?.[i];
    if (int) {
      const idsDevice = c.idsOnDevice ? device : "cpu";
      if (int.dtype === "int64") {
        const v = new BigInt64Array(n);
        for (let j = 0; j < n; j++) v[j] = BigInt(Math.floor(r() * int.vocab));
        return Tensor.fromArray(v, shape, { device: idsDevice });
      }
      const v = new Int32Array(n);
      for (let j = 0; j < n; j++) v[j] = Math.floor(r() * int.vocab);
      return Tensor.fromArray(v, shape, { device: idsDevice });
    }
    const gen = c.values?.[i];
    let v: Float32Array;
    if (gen) v = gen(n, r);
    else {
      v = new Float32Array(n);
      for (let j = 0; j < n; j++) v[j] = (r() * 2 - 1) * 1.5;
    }
    return Tensor.fromArray(v, shape, { device });
  });
}

/** What one device computes for a case: the gradients of its float inputs, or the custom arrays. */
async function evaluate(c: GradCase, device: string): Promise<Float32Array[]> {
  const xs = makeInputs(c, device);
  try {
    if (c.custom) return await c.custom(xs, device);
    if (!c.run) throw new Error("a case needs run or custom");
    const wants = xs.map((t, i) => t.dtype === "float32" && !c.ints?.[i] && !c.noGrad?.includes(i));
    xs.forEach((t, i) => { if (wants[i]) t.requiresGrad = true; });
    const loss = tidy(() => {
      const out = c.run!(xs);
      if (out.dtype !== "float32") throw new Error(`the forward returned ${out.dtype}, expected float32`);
      const r = rng(seedOf(c.name) ^ 0x5bd1e995);
      const w = Float32Array.from({ length: out.numel }, () => r() * 2 - 1);
      return ops.sum(ops.mul(out, Tensor.fromArray(w, out.shape, { device })));
    });
    try {
      backward(loss);
    } finally {
      loss.dispose();
    }
    const out: Float32Array[] = [];
    for (let i = 0; i < xs.length; i++) {
      if (!wants[i]) continue;
      const g = xs[i].grad;
      if (!g) throw new Error(`input ${i} got no gradient`);
      if (g.device !== xs[i].device) throw new Error(`input ${i}'s gradient is on ${g.device}, the input on ${xs[i].device}`);
      out.push(await g.toFloat32Array());
    }
    return out;
  } finally {
    for (const t of xs) {
      if (t.requiresGrad) t.grad = null;
      t.dispose();
    }
  }
}

function compare(name: string, got: Float32Array[], ref: Float32Array[], tolScale: number): GradParityResult {
  if (got.length !== ref.length) return { name, ok: false, maxAbs: NaN, maxRel: NaN, compared: 0, detail: `${got.length} results vs ${ref.length}` };
  let maxAbs = 0, maxRel = 0, compared = 0;
  for (let k = 0; k < ref.length; k++) {
    const a = got[k], b = ref[k];
    if (a.length !== b.length) return { name, ok: false, maxAbs: NaN, maxRel: NaN, compared, detail: `result ${k}: length ${a.length} vs ${b.length}` };
    let refMax = 0;
    for (let i = 0; i < b.length; i++) refMax = Math.max(refMax, Math.abs(b[i]));
    const atol = ATOL * Math.max(1, refMax * 0.1);
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i] - b[i]);
      compared++;
      const bothNaN = Number.isNaN(a[i]) && Number.isNaN(b[i]);
      if (!bothNaN && !(d <= (atol + RTOL * Math.abs(b[i])) * tolScale))
        return { name, ok: false, maxAbs: Math.max(maxAbs, d), maxRel, compared, detail: `result ${k} [${i}]: device ${a[i]} vs cpu ${b[i]}` };
      if (d > maxAbs) maxAbs = d;
      const rel = d / Math.max(Math.abs(b[i]), 1e-3);
      if (rel > maxRel) maxRel = rel;
    }
  }
  return { name, ok: true, maxAbs, maxRel, compared };
}

/** One case: the CPU's results against `device`'s. */
export async function runGradCase(c: GradCase, device: string): Promise<GradParityResult> {
  try {
    const ref = await evaluate(c, "cpu");
    const got = await evaluate(c, device);
    return compare(c.name, got, ref, c.tolScale ?? 1);
  } catch (e) {
    return { name: c.name, ok: false, maxAbs: NaN, maxRel: NaN, compared: 0, detail: `threw: ${(e as Error).message}` };
  }
}

/** Runs `cases` (default: gradCases()) and logs one line each, then "N/M passed". */
export async function runGradParity(device = "cuda:0", log: (line: string) => void = console.log, cases: GradCase[] = gradCases()): Promise<GradParityResult[]> {
  const results: GradParityResult[] = [];
  for (const c of cases) {
    const r = await runGradCase(c, device);
    results.push(r);
    log(`${r.ok ? "ok  " : "FAIL"} ${r.name.padEnd(52)} maxAbs ${r.maxAbs.toExponential(2)} maxRel ${r.maxRel.toExponential(2)}${r.detail ? "  " + r.detail : ""}`);
  }
  const passed = results.filter((r) => r.ok).length;
  log(`${passed}/${results.length} passed`);
  return results;
}

if (require.main === module) {
  const jsonAt = process.argv.indexOf("--json");
  const selfTest = process.argv.includes("--self-test");
  const cuda = devices().find((d) => d.type === "cuda");
  if (!cuda && !selfTest) {
    console.log("cuda-grad-parity: no CUDA device answered; nothing to check");
    process.exit(0);
  }
  withExactCpuReference(() => runGradParity(selfTest ? "cpu" : "cuda:0")).then((results) => {
    if (jsonAt > 0) fs.writeFileSync(process.argv[jsonAt + 1], JSON.stringify({ device: selfTest ? "cpu" : cuda, results }, null, 1));
    process.exitCode = results.every((r) => r.ok) ? 0 : 1;
  }, (e) => { console.error(e); process.exitCode = 1; });
}
