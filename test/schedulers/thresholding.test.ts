// Dynamic thresholding (Imagen §2.3) against a plain JS torch.quantile + clamp, and the x0
// clipping options of the samplers.
import { Tensor } from "../../lib/tensor";
import { TorchGenerator } from "../../lib/random/torch-generator";
import { createScheduler, dynamicThreshold, rowQuantileAbs, Scheduler } from "../../lib/schedulers";

const f32 = Math.fround;

/** torch.quantile(row, q) with linear interpolation, as torch 1.13 computes it in float32. */
function quantileRef(row: ArrayLike<number>, q: number): number {
  const v = Array.from(row).sort((a, b) => a - b);
  const rank = f32(f32(q) * (v.length - 1));
  const lo = Math.trunc(rank);
  const hi = Math.ceil(rank);
  const w = f32(rank - lo);
  const d = f32(v[hi] - v[lo]);
  return w < 0.5 ? f32(v[lo] + f32(w * d)) : f32(v[hi] - f32(d * f32(1 - w)));
}

function makeData(kind: string, shape: number[], seed: number): Float32Array {
  const g = new TorchGenerator(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const x = g.randn([n]);
  const per = n / shape[0];
  for (let i = 0; i < n; i++) {
    const item = Math.floor(i / per);
    if (kind === "ties") x[i] = Math.round(x[i] * 4) / 4;
    if (kind === "zeros" && i % 3 !== 0) x[i] = 0;
    if (kind === "scaled") x[i] *= item === 0 ? 0.5 : 3.7;
    if (kind === "large") x[i] *= 1000;
  }
  return x;
}

const CASES: [string, number[]][] = [
  ["normal", [1, 4, 8, 8]],
  ["ties", [2, 4, 8, 8]],
  ["zeros", [2, 3, 5, 7]],
  ["scaled", [2, 4, 6, 6]],
  ["large", [1, 4, 16, 16]],
];

describe("rowQuantileAbs = torch.quantile(|x|.reshape(B, -1), q, dim=1)", () => {
  test.each(CASES)("%s %j", async (kind, shape) => {
    const data = makeData(kind, shape, 17);
    const x = Tensor.fromArray(data, shape);
    const B = shape[0];
    const per = data.length / B;
    for (const q of [0, 0.2, 0.5, 0.9, 0.995, 1]) {
      const t = rowQuantileAbs(x, q);
      expect(t.shape).toEqual([B, 1]);
      const got = await t.toFloat32Array();
      t.dispose();
      for (let b = 0; b < B; b++) {
        const want = quantileRef(Array.from(data.subarray(b * per, (b + 1) * per), Math.abs), q);
        const tol = 2 ** -22 * Math.max(want, 1e-30);
        if (Math.abs(got[b] - want) > tol) throw new Error(`${kind} q=${q} row ${b}: got ${got[b]}, want ${want}`);
      }
    }
    x.dispose();
  });
});

describe("dynamicThreshold", () => {
  test.each(CASES)("%s %j matches clamp(x, -s, s)/s with s = clamp(quantile, 1, max)", async (kind, shape) => {
    const data = makeData(kind, shape, 23);
    const x = Tensor.fromArray(data, shape);
    const B = shape[0];
    const per = data.length / B;
    for (const [ratio, maxValue] of [[0.995, 1.5], [0.9, 5], [0.5, 1]]) {
      const out = dynamicThreshold(x, ratio, maxValue);
      expect(out.shape).toEqual(shape);
      const got = await out.toFloat32Array();
      out.dispose();
      for (let b = 0; b < B; b++) {
        const row = data.subarray(b * per, (b + 1) * per);
        const s = Math.min(Math.max(quantileRef(Array.from(row, Math.abs), ratio), 1), f32(maxValue));
        for (let i = 0; i < per; i++) {
          const want = f32(Math.min(Math.max(row[i], -s), s) / s);
          const g = got[b * per + i];
          if (Math.abs(g - want) > 1e-6) throw new Error(`${kind} ratio ${ratio} [${b}, ${i}]: got ${g}, want ${want}`);
        }
      }
    }
    x.dispose();
  });

  test("bad arguments are RangeErrors", () => {
    const x = Tensor.zeros([4]);
    expect(() => dynamicThreshold(x, 0.9, 1)).toThrow(/must be \[B, C, ...\]/);
    expect(() => rowQuantileAbs(Tensor.zeros([1, 4]), 1.5)).toThrow(/ratio must be in \[0, 1\]/);
    x.dispose();
  });
});

describe("x0 clipping and thresholding inside the samplers", () => {
  const SD15 = { beta_start: 0.00085, beta_end: 0.012, beta_schedule: "scaled_linear", steps_offset: 1, clip_sample: false };

  async function x0Range(s: Scheduler): Promise<number> {
    s.setTimesteps(5);
    const shape = [2, 4, 8, 8];
    let x = Tensor.fromArray(new TorchGenerator(4).randn(shape), shape);
    let worst = 0;
    const g = new TorchGenerator(8);
    for (const t of s.timesteps) {
      const m = Tensor.fromArray(new TorchGenerator(t).randn(shape), shape); // far from a good denoiser: x0 is large
      const out = s.stepOutput(m, t, x, { generator: g });
      const x0 = await out.predOriginalSample!.toFloat32Array();
      for (const v of x0) worst = Math.max(worst, Math.abs(v));
      for (const k of [m, x, out.predOriginalSample, out.denoised]) if (k && k !== out.prevSample) k.dispose();
      x = out.prevSample;
    }
    x.dispose();
    return worst;
  }

  test("thresholding bounds x0 by 1 (DDPM, DDIM, LCM); clip_sample by its range", async () => {
    for (const name of ["ddpm", "ddim", "lcm"]) {
      const free = await x0Range(createScheduler(name, SD15));
      expect([name, free > 2]).toEqual([name, true]);
      const th = await x0Range(createScheduler(name, SD15, { thresholding: true, sample_max_value: 1.5 }));
      expect([name, th <= 1]).toEqual([name, true]);
      const cl = await x0Range(createScheduler(name, SD15, { clip_sample: true, clip_sample_range: 0.75 }));
      expect([name, cl]).toEqual([name, 0.75]);
    }
  });
});
