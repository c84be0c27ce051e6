/**
 * Gradient check of a recorded op against central finite differences of its float64 reference
 * (test/helpers/naive.ts). Inputs are rounded to float32 first so both sides see the same
 * point; the upstream gradient is a random tensor, so every output element is weighted
 * differently; the comparison is per input tensor: max|ours - ref| <= tol * max(max|ref|, 1e-3).
 */
import { Tensor, tidy } from "../../lib/tensor";
import { backward, liveNodeCount } from "../../lib/autograd";
import { numel, randn, type ND } from "../helpers/naive";

export interface GradCase {
  /** Float64 inputs (rounded to float32 here). */
  inputs: ND[];
  /** Which inputs get a gradient (default all). */
  wrt?: boolean[];
  /** The op under test on float32 tensors. */
  ours: (xs: Tensor[]) => Tensor;
  /** The same op in float64. */
  ref: (xs: ND[]) => ND;
  /** Relative tolerance (default 2e-5 of the largest reference gradient). */
  tol?: number;
  /** Finite-difference step (default 1e-6, scaled by max(1, |x|)). */
  h?: number;
}

const f32 = (x: ND): ND => ({ data: Float64Array.from(Float32Array.from(x.data)), shape: [...x.shape] });

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export interface GradResult { worst: number; perInput: (number | null)[] }

/** Runs the check; throws with the worst element when outside tolerance. Returns the errors. */
export async function gradcheck(label: string, c: GradCase, seed = 1): Promise<GradResult> {
  const xs = c.inputs.map(f32);
  const wrt = c.wrt ?? xs.map(() => true);
  const out0 = c.ref(xs);
  const w = f32(randn(out0.shape, seed + 1000));
  const before = liveNodeCount();

  // ours: backward with the random upstream gradient
  const ts = xs.map((x) => Tensor.fromArray(Float32Array.from(x.data), x.shape));
  ts.forEach((t, i) => { if (wrt[i]) t.requiresGrad = true; });
  let grads: (Float32Array | null)[];
  try {
    const out = tidy(() => c.ours(ts));
    try {
      expect([...out.shape]).toEqual(out0.shape);
      const wt = Tensor.fromArray(Float32Array.from(w.data), w.shape);
      try { backward(out, { grad: wt }); } finally { wt.dispose(); }
    } finally {
      out.dispose();
    }
    grads = await Promise.all(ts.map(async (t, i) => (wrt[i] && t.grad ? t.grad.toFloat32Array() : null)));
  } finally {
    for (const t of ts) { t.grad = null; t.dispose(); }
  }
  expect(liveNodeCount()).toBe(before);

  // reference: d(sum w * ref(x)) / dx by central differences in float64
  const perInput: (number | null)[] = [];
  let worst = 0;
  const failures: string[] = [];
  xs.forEach((x, i) => {
    if (!wrt[i]) { perInput.push(null); return; }
    const got = grads[i];
    if (!got) { failures.push(`input ${i}: no gradient`); perInput.push(null); return; }
    const n = numel(x.shape);
    const ref = new Float64Array(n);
    for (let e = 0; e < n; e++) {
      const v = x.data[e];
      const h = (c.h ?? 1e-6) * Math.max(1, Math.abs(v));
      x.data[e] = v + h;
      const up = dot(c.ref(xs).data, w.data);
      x.data[e] = v - h;
      const down = dot(c.ref(xs).data, w.data);
      x.data[e] = v;
      ref[e] = (up - down) / (2 * h);
    }
    let maxRef = 0, maxDiff = 0, at = 0;
    for (let e = 0; e < n; e++) {
      maxRef = Math.max(maxRef, Math.abs(ref[e]));
      const d = Math.abs(got[e] - ref[e]);
      if (!(d <= maxDiff)) { maxDiff = Number.isNaN(d) ? Infinity : d; at = e; }
    }
    const err = maxDiff / Math.max(maxRef, 1e-3);
    perInput.push(err);
    worst = Math.max(worst, err);
    if (!(err <= (c.tol ?? 2e-5)))
      failures.push(`input ${i} [${x.shape.join(",")}]: max|diff| ${maxDiff.toExponential(3)} (rel ${err.toExponential(3)}) ` +
        `at ${at}: got ${got[at]}, finite differences ${ref[at]}`);
  });
  if (failures.length) throw new Error(`${label}:\n  ${failures.join("\n  ")}`);
  return { worst, perInput };
}
