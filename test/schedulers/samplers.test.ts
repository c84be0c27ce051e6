// Samplers vs diffusers 0.27.2: every trajectory of cases/schedulers replayed with the fake model
// from the reference README, each step's sample within 1e-5·S (S = max(1, max|samples|) of the case).
import * as fs from "fs";
import { Tensor } from "../../lib/tensor";
import { add, mul } from "../../lib/ops";
import { parseDiffusersJson, SchedulerClassName } from "../../lib/schedulers/schedule";
import { NoiseSource, Scheduler, StepOptions, schedulerFromConfig } from "../../lib/schedulers";
import { SafetensorsFile } from "../helpers/read-safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";

interface TensorInfo {
  name: string;
  shape: number[];
  dtype: string;
}
interface Case {
  id: string;
  scheduler: SchedulerClassName;
  file: string;
  variant: string;
  num_inference_steps: number;
  step_kwargs: Record<string, unknown>;
  config: Record<string, unknown>;
  init_noise_sigma: number;
  timesteps: number[];
  num_loop_iterations: number;
  stochastic_draws: number;
  tensors: Record<string, TensorInfo>;
}

const TOL = 1e-5;

/** model_output = f32(0.3)·x_in + f32(0.05·cos(t/100)) (product and sum rounded separately). */
function fakeModel(x: Tensor, t: number): Tensor {
  const p = mul(x, 0.3);
  const out = add(p, Math.fround(0.0501 * Math.cos(t / 100)));
  p.dispose();
  return out;
}

/** Hands out the pre-drawn golden noise in order and checks which loop iteration asks for it. */
class GoldenNoise implements NoiseSource {
  used = 0;
  loopIndex = -1;
  constructor(
    private readonly id: string,
    private readonly data: Float32Array | null,
    private readonly stepIndex: number[],
    private readonly per: number,
  ) {}
  randn(shape: readonly number[]): Float32Array {
    const n = shape.reduce((a, b) => a * b, 1);
    if (!this.data || this.used >= this.stepIndex.length) throw new Error(`${this.id}: unexpected noise draw at iteration ${this.loopIndex}`);
    if (this.stepIndex[this.used] !== this.loopIndex) {
      throw new Error(`${this.id}: draw ${this.used} came at iteration ${this.loopIndex}, diffusers drew it at ${this.stepIndex[this.used]}`);
    }
    if (n !== this.per) throw new Error(`${this.id}: draw of shape [${shape.join(",")}], expected ${this.per} values`);
    const out = this.data.slice(this.used * this.per, (this.used + 1) * this.per);
    this.used++;
    return out;
  }
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function maxDiff(a: ArrayLike<number>, ref: ArrayLike<number>, offset: number): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - ref[offset + i]);
    m = Math.max(m, Number.isNaN(d) ? Infinity : d);
  }
  return m;
}

interface Stats {
  cases: number;
  worstSample: number;
  worstSampleCase: string;
  worstX0: number;
  worstInput: number;
}

describeIfReference("samplers vs diffusers 0.27.2 (cases/schedulers trajectories)", () => {
  const dir = referencePath("cases", "schedulers");
  const manifest = parseDiffusersJson(fs.readFileSync(`${dir}/manifest.json`, "utf8")) as unknown as { cases: Case[] };
  const files = new Map<string, SafetensorsFile>();
  const file = (f: string): SafetensorsFile => {
    let st = files.get(f);
    if (!st) files.set(f, (st = SafetensorsFile.read(`${dir}/${f}`)));
    return st;
  };
  const common = SafetensorsFile.read(`${dir}/common.safetensors`);
  const xT = common.get("x_T");
  const f32 = (st: SafetensorsFile, name: string): Float32Array => st.get(name).data as Float32Array;
  const stats = new Map<string, Stats>();

  afterAll(() => {
    const lines = [...stats.entries()].map(
      ([k, s]) =>
        `  ${k.padEnd(32)} ${String(s.cases).padStart(3)} cases  sample ${s.worstSample.toExponential(2)}·S (${s.worstSampleCase})` +
        `  x0 ${s.worstX0.toExponential(2)}  model_input ${s.worstInput.toExponential(2)}`,
    );
    process.stderr.write(`[samplers] worst max|ours - diffusers| / S per class:\n${lines.join("\n")}\n`);
  });

  test("the manifest holds 250 cases", () => {
    expect(manifest.cases.length).toBe(250);
  });

  for (const c of manifest.cases) {
    test(`${c.id}`, async () => {
      const st = file(c.file);
      const samples = f32(st, c.tensors.samples.name);
      const per = xT.data.length;
      const iters = c.num_loop_iterations;
      expect(samples.length).toBe((iters + 1) * per);
      const S = Math.max(1, maxAbs(samples));
      const inputs = f32(st, c.tensors.model_inputs.name);
      const x0Ref = c.tensors.pred_original_samples ? f32(st, c.tensors.pred_original_samples.name) : null;
      const denRef = c.tensors.denoised ? f32(st, c.tensors.denoised.name) : null;
      // x0 inherits the trajectory's absolute error (diffusers' own x + d·dt cancels at sigma ~ 4096 in the
      // zero-SNR cases), so it is measured on the larger of the two scales
      const sX0 = Math.max(S, maxAbs(x0Ref ?? denRef ?? []));
      const noise = new GoldenNoise(
        c.id,
        c.tensors.noise ? f32(st, c.tensors.noise.name) : null,
        c.tensors.noise_step_index ? st.numbers(c.tensors.noise_step_index.name) : [],
        per,
      );
      const opts: StepOptions = { generator: noise, ...(c.step_kwargs as StepOptions) };

      const sched: Scheduler = schedulerFromConfig(c.scheduler, c.config);
      sched.setTimesteps(c.num_inference_steps);
      expect(sched.order).toBe((c as unknown as { order: number }).order);
      expect(sched.timesteps.length).toBe(iters);
      for (let i = 0; i < iters; i++) {
        if (Math.abs(sched.timesteps[i] - c.timesteps[i]) > 1e-4) throw new Error(`${c.id}: timesteps[${i}] ${sched.timesteps[i]} vs ${c.timesteps[i]}`);
      }
      expect(Math.abs(sched.initNoiseSigma - c.init_noise_sigma)).toBeLessThanOrEqual(1e-6 * c.init_noise_sigma);

      const xT0 = Tensor.fromArray(xT.data as Float32Array, xT.shape);
      let x = mul(xT0, sched.initNoiseSigma);
      xT0.dispose();
      let worst = maxDiff(await x.toFloat32Array(), samples, 0) / S;
      let worstX0 = 0;
      let worstIn = 0;
      let at = "init";
      try {
        for (let i = 0; i < iters; i++) {
          const t = sched.timesteps[i];
          const xin = sched.scaleModelInput(x, t);
          const mo = fakeModel(xin, t);
          noise.loopIndex = i;
          const out = sched.stepOutput(mo, t, x, opts);
          const [vin, vprev] = await Promise.all([xin.toFloat32Array(), out.prevSample.toFloat32Array()]);
          worstIn = Math.max(worstIn, maxDiff(vin, inputs, i * per) / S);
          const e = maxDiff(vprev, samples, (i + 1) * per) / S;
          if (e > worst) {
            worst = e;
            at = `step ${i}`;
          }
          if (x0Ref && out.predOriginalSample) worstX0 = Math.max(worstX0, maxDiff(await out.predOriginalSample.toFloat32Array(), x0Ref, i * per) / sX0);
          if (denRef && out.denoised) worstX0 = Math.max(worstX0, maxDiff(await out.denoised.toFloat32Array(), denRef, i * per) / sX0);
          for (const tt of [xin, mo, x, out.predOriginalSample, out.denoised]) if (tt && tt !== out.prevSample) tt.dispose();
          x = out.prevSample;
        }
      } finally {
        x.dispose();
        sched.dispose();
      }
      expect(noise.used).toBe(c.stochastic_draws);
      const s = stats.get(c.scheduler) ?? { cases: 0, worstSample: 0, worstSampleCase: "", worstX0: 0, worstInput: 0 };
      s.cases++;
      if (worst >= s.worstSample) {
        s.worstSample = worst;
        s.worstSampleCase = `${c.variant}.s${c.num_inference_steps} ${at}`;
      }
      s.worstX0 = Math.max(s.worstX0, worstX0);
      s.worstInput = Math.max(s.worstInput, worstIn);
      stats.set(c.scheduler, s);
      expect([c.id, "sample", worst <= TOL]).toEqual([c.id, "sample", true]);
      expect([c.id, "model_input", worstIn <= TOL]).toEqual([c.id, "model_input", true]);
      expect([c.id, "x0/denoised", worstX0 <= TOL]).toEqual([c.id, "x0/denoised", true]);
    });
  }

  // add_noise(x0, noise, timesteps[k]) after set_timesteps(10), for every class
  const classes = [...new Set(manifest.cases.map((c) => c.scheduler))];
  for (const cls of classes) {
    test(`${cls}: addNoise`, async () => {
      const c = manifest.cases.find((k) => k.scheduler === cls && k.variant === "sd15" && k.num_inference_steps === 10)!;
      const st = file(c.file);
      const x0 = Tensor.fromArray(common.get("x0").data as Float32Array, xT.shape);
      const nz = Tensor.fromArray(common.get("add_noise_noise").data as Float32Array, xT.shape);
      const names = st.names.filter((n) => n.startsWith("sd15.add_noise.") && n.endsWith(".timestep"));
      expect(names.length).toBe(2);
      for (const n of names) {
        const sched = schedulerFromConfig(cls, c.config);
        sched.setTimesteps(10);
        const t = st.numbers(n)[0];
        const ref = f32(st, n.replace(/\.timestep$/, ".noisy"));
        const out = sched.addNoise(x0, nz, t);
        const e = maxDiff(await out.toFloat32Array(), ref, 0) / Math.max(1, maxAbs(ref));
        out.dispose();
        expect([n, e <= 1e-6]).toEqual([n, true]);
      }
      x0.dispose();
      nz.dispose();
    });
  }
});
