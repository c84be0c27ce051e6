// Samplers vs diffusers 0.27.2: every trajectory of cases/schedulers replayed with the fake model
// from the reference README, each step's sample within 1e-5·S (S = max(1, max|samples|) of the case).
import * as fs from "fs";
import { Tensor, tidy } from "../../lib/tensor";
import { add, axpby, mul } from "../../lib/ops";
import { memoryStats, synchronize } from "../../lib/devices";
import { TorchGenerator } from "../../lib/random/torch-generator";
import { parseDiffusersJson, SchedulerClassName } from "../../lib/schedulers/schedule";
import { NoiseSource, SAMPLER_NAMES, Scheduler, StepOptions, createScheduler, schedulerFromConfig } from "../../lib/schedulers";
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
  const out = add(p, Math.fround(0.05 * Math.cos(t / 100)));
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
  worstX0: number | null;
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
        `  x0 ${s.worstX0 === null ? "(not stored)" : s.worstX0.toExponential(2)}  model_input ${s.worstInput.toExponential(2)}`,
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
      const s = stats.get(c.scheduler) ?? { cases: 0, worstSample: 0, worstSampleCase: "", worstX0: null, worstInput: 0 };
      s.cases++;
      if (worst >= s.worstSample) {
        s.worstSample = worst;
        s.worstSampleCase = `${c.variant}.s${c.num_inference_steps} ${at}`;
      }
      if (x0Ref || denRef) s.worstX0 = Math.max(s.worstX0 ?? 0, worstX0);
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

// ---------------------------------------------------------------------------------------------
// API, options, noise order and state (no reference data needed)

const SD15 = {
  _class_name: "PNDMScheduler",
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  clip_sample: false,
  trained_betas: null,
};

function seededLatents(seed: number, shape = [1, 4, 8, 8]): Tensor {
  return Tensor.fromArray(new TorchGenerator(seed).randn(shape), shape);
}

/** The plain denoising loop with the fake model; returns the final sample's values. */
async function runLoop(sched: Scheduler, steps: number, opts: StepOptions = {}, wrapTidy = false): Promise<Float32Array> {
  sched.setTimesteps(steps);
  const x0 = seededLatents(7);
  let x = mul(x0, sched.initNoiseSigma);
  x0.dispose();
  for (const t of sched.timesteps) {
    const next = (): Tensor => {
      const xin = sched.scaleModelInput(x, t);
      const m = fakeModel(xin, t);
      const prev = sched.step(m, t, x, opts);
      xin.dispose();
      m.dispose();
      return prev;
    };
    const prev = wrapTidy ? tidy(next) : next();
    x.dispose();
    x = prev;
  }
  const out = await x.toFloat32Array();
  x.dispose();
  return out;
}

function relDiff(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

describe("sampler names and options", () => {
  test("SAMPLER_NAMES lists the twelve user names", () => {
    expect([...SAMPLER_NAMES]).toEqual([
      "ddim", "ddpm", "pndm", "euler", "euler-a", "heun", "lms", "dpm++2m", "dpm++2m-karras", "dpm++2m-sde-karras", "unipc", "lcm",
    ]);
  });

  test("an unknown sampler name is a RangeError listing every valid one", () => {
    for (const bad of ["dpm++3m", "Euler", "", "euler_a"]) {
      let err: unknown;
      try {
        createScheduler(bad, SD15);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RangeError);
      const msg = (err as Error).message;
      expect(msg).toContain(JSON.stringify(bad));
      for (const n of SAMPLER_NAMES) expect(msg).toContain(`"${n}"`);
    }
    expect(() => createScheduler(undefined as unknown as string)).toThrow(RangeError);
    expect(() => schedulerFromConfig("FooScheduler" as SchedulerClassName)).toThrow(/className must be one of "DDPMScheduler", .*got "FooScheduler"/);
  });

  test("names map to classes and fix their own options; from_config semantics for the rest", () => {
    const want: Record<string, string> = {
      ddim: "DDIMScheduler", ddpm: "DDPMScheduler", pndm: "PNDMScheduler", euler: "EulerDiscreteScheduler",
      "euler-a": "EulerAncestralDiscreteScheduler", heun: "HeunDiscreteScheduler", lms: "LMSDiscreteScheduler",
      "dpm++2m": "DPMSolverMultistepScheduler", "dpm++2m-karras": "DPMSolverMultistepScheduler",
      "dpm++2m-sde-karras": "DPMSolverMultistepScheduler", unipc: "UniPCMultistepScheduler", lcm: "LCMScheduler",
    };
    for (const n of SAMPLER_NAMES) expect([n, createScheduler(n, SD15).className]).toEqual([n, want[n]]);
    // the SD1.5 file has no timestep_spacing: each class falls back to its own default
    expect(createScheduler("ddim", SD15).config.timestepSpacing).toBe("leading");
    expect(createScheduler("euler", SD15).config.timestepSpacing).toBe("linspace");
    expect(createScheduler("ddim", SD15).config.stepsOffset).toBe(1);
    expect(createScheduler("dpm++2m", SD15).config.useKarrasSigmas).toBe(false);
    expect(createScheduler("dpm++2m-karras", SD15).config.useKarrasSigmas).toBe(true);
    const sde = createScheduler("dpm++2m-sde-karras", SD15, { use_karras_sigmas: false, algorithm_type: "dpmsolver++" });
    expect([sde.config.algorithmType, sde.config.useKarrasSigmas]).toEqual(["sde-dpmsolver++", true]);
    expect(createScheduler("euler", SD15, { timestep_spacing: "trailing" }).config.timestepSpacing).toBe("trailing");
    // a parsed SchedulerConfig of another class: its default-valued fields do not leak across
    const eulerCfg = createScheduler("euler", SD15).config;
    expect(createScheduler("ddim", eulerCfg).config.timestepSpacing).toBe("leading");
    expect(createScheduler("ddim", eulerCfg).config.betaSchedule).toBe("scaled_linear");
    // diffusers' in-memory configs list the keys it filled with defaults
    const withDefaults = { ...SD15, timestep_spacing: "leading", _use_default_values: ["timestep_spacing"] };
    expect(createScheduler("euler", withDefaults).config.timestepSpacing).toBe("linspace");
  });

  test.each([
    ["ddpm", { variance_type: "learned_range" }, /variance_type must be one of "fixed_small", "fixed_small_log", "fixed_large", got "learned_range"/],
    ["ddpm", { prediction_type: "x0" }, /prediction_type must be one of "epsilon", "v_prediction", "sample", got "x0"/],
    ["euler-a", { prediction_type: "sample" }, /prediction_type must be one of "epsilon", "v_prediction", got "sample"/],
    ["pndm", { prediction_type: "sample" }, /prediction_type must be one of "epsilon", "v_prediction", got "sample"/],
    ["euler", { timestep_spacing: "middle" }, /timestep_spacing must be one of "linspace", "leading", "trailing"/],
    ["dpm++2m", { solver_order: 3 }, null], // the name fixes the order: 2M
    ["unipc", { solver_order: 4 }, /solver_order must be one of 1, 2, 3, got 4/],
    ["unipc", { predict_x0: false }, /predict_x0 must be true/],
    ["dpm++2m", { beta_schedule: "sigmoid" }, /beta_schedule "sigmoid" is not supported/],
  ])("%s with %j is a RangeError naming the allowed values", (name, over, msg) => {
    if (msg === null) {
      expect(createScheduler(name, SD15, over).config.solverOrder).toBe(2);
      expect(() => schedulerFromConfig("DPMSolverMultistepScheduler", { ...SD15, ...over })).toThrow(/solver_order must be one of 1, 2, got 3/);
      return;
    }
    expect(() => createScheduler(name, SD15, over)).toThrow(RangeError);
    expect(() => createScheduler(name, SD15, over)).toThrow(msg);
  });

  test("DPM-Solver algorithm types other than the ++ ones are refused with the allowed list", () => {
    const raw = { ...SD15, algorithm_type: "sde-dpmsolver", final_sigmas_type: "sigma_min" };
    expect(() => schedulerFromConfig("DPMSolverMultistepScheduler", raw)).toThrow(/algorithm_type must be one of "dpmsolver\+\+", "sde-dpmsolver\+\+", got "sde-dpmsolver"/);
  });

  test("bad step options and misuse are errors that say what was expected", () => {
    const ddim = createScheduler("ddim", SD15);
    const x = seededLatents(1);
    expect(() => ddim.step(x, 1, x)).toThrow(/call setTimesteps/);
    ddim.setTimesteps(5);
    expect(() => ddim.step(x, ddim.timesteps[0], x, { eta: -1 })).toThrow(/eta must be a finite number >= 0/);
    const y = Tensor.zeros([1, 4, 8, 9]);
    expect(() => ddim.step(y, ddim.timesteps[0], x)).toThrow(RangeError);
    expect(() => ddim.step(y, ddim.timesteps[0], x)).toThrow(/modelOutput has shape \[1, 4, 8, 9\] but sample has \[1, 4, 8, 8\]/);
    const lms = createScheduler("lms", SD15);
    lms.setTimesteps(5);
    expect(() => lms.step(x, lms.timesteps[0], x, { order: 5 })).toThrow(/order must be one of 1, 2, 3, 4, got 5/);
    const euler = createScheduler("euler", SD15);
    euler.setTimesteps(3);
    expect(() => euler.step(x, 123.5, x)).toThrow(/timestep 123.5 is not in the schedule/);
    expect(() => euler.step(x, euler.timesteps[0], x, { sChurn: -1 })).toThrow(/sChurn must be a finite number >= 0/);
    for (const t of euler.timesteps) euler.step(x, t, x).dispose();
    expect(() => euler.step(x, euler.timesteps[0], x)).toThrow(/all 3 steps are done/);
    expect(() => euler.setBeginIndex(3)).toThrow(/index must be an integer in \[0, 2\]/);
    x.dispose();
    y.dispose();
  });

  test("every sampler runs a short loop from the SD1.5 config with a torch generator, finite", async () => {
    for (const n of SAMPLER_NAMES) {
      const s = createScheduler(n, SD15);
      const out = await runLoop(s, 4, { generator: new TorchGenerator(3) });
      expect([n, out.every(Number.isFinite)]).toEqual([n, true]);
      s.dispose();
    }
  });
});

describe("noise draws follow diffusers' order", () => {
  const shape = [1, 4, 8, 8];
  // number of g.randn(shape) calls in a 6-step loop
  test.each([
    ["ddpm", {}, {}, 5], // default DDPM grid ends at t = 0, which draws nothing
    ["ddim", {}, {}, 0],
    ["ddim", {}, { eta: 1 }, 6],
    ["pndm", {}, {}, 0],
    ["euler", {}, {}, 6], // drawn even when unused (s_churn = 0)
    ["euler-a", {}, {}, 6],
    ["heun", {}, {}, 0],
    ["lms", {}, {}, 0],
    ["dpm++2m", {}, {}, 0],
    ["dpm++2m-sde-karras", {}, {}, 6],
    ["unipc", {}, {}, 0],
    ["lcm", {}, {}, 5], // all but the last step
  ] as const)("%s %j %j draws %i times", async (name, over, opts, draws) => {
    const cfg = name === "ddpm" ? { ...SD15, steps_offset: 0 } : SD15;
    const s = createScheduler(name, cfg, over);
    const g = new TorchGenerator(11);
    await runLoop(s, 6, { ...opts, generator: g });
    const ref = new TorchGenerator(11);
    for (let i = 0; i < draws; i++) ref.randn(shape);
    expect(Array.from(g.randn([4]))).toEqual(Array.from(ref.randn([4])));
  });

  test("opts.noise replaces the draw; a list of generators draws per batch item", async () => {
    const s = createScheduler("euler-a", SD15);
    s.setTimesteps(3);
    const x = seededLatents(5, [2, 4, 8, 8]);
    const t = s.timesteps[0];
    const nz = seededLatents(9, [2, 4, 8, 8]);
    const a = await s.step(x, t, x, { noise: nz }).toFloat32Array();
    s.reset();
    const g0 = new TorchGenerator(9);
    const fake: NoiseSource = { randn: () => g0.randn([2, 4, 8, 8]) };
    const b = await s.step(x, t, x, { generator: fake }).toFloat32Array();
    expect(Array.from(a)).toEqual(Array.from(b));
    s.reset();
    const gens = [new TorchGenerator(1), new TorchGenerator(2)];
    const c = await s.step(x, t, x, { generator: gens }).toFloat32Array();
    s.reset();
    const both = new Float32Array(512);
    both.set(new TorchGenerator(1).randn([1, 4, 8, 8]), 0);
    both.set(new TorchGenerator(2).randn([1, 4, 8, 8]), 256);
    const nz2 = Tensor.fromArray(both, [2, 4, 8, 8]);
    const d = await s.step(x, t, x, { noise: nz2 }).toFloat32Array();
    expect(Array.from(c)).toEqual(Array.from(d));
    expect(() => s.step(x, t, x, { noise: seededLatents(1) })).toThrow(/opts.noise has shape/);
    for (const k of [x, nz, nz2]) k.dispose();
  });
});

describe("sampler state", () => {
  test.each(["pndm", "heun", "lms", "dpm++2m", "dpm++2m-sde-karras", "unipc"])(
    "%s: reset() restarts the trajectory; history survives tidy(); dispose() frees it",
    async (name) => {
      const s = createScheduler(name, SD15);
      const opts = (): StepOptions => ({ generator: new TorchGenerator(5) });
      await synchronize("cpu");  // queued ops of earlier tests still hold buffers until they run
      const before = memoryStats("cpu").bytesInUse;
      const a = await runLoop(s, 8, opts());
      s.reset();
      const b = await runLoop(s, 8, opts(), true);
      expect(Array.from(b)).toEqual(Array.from(a));
      // a run cut short, then a fresh setTimesteps: no state leaks into the new run
      s.setTimesteps(8);
      const x = seededLatents(3);
      s.step(x, s.timesteps[0], x, opts()).dispose();
      x.dispose();
      const c = await runLoop(s, 8, opts());
      expect(Array.from(c)).toEqual(Array.from(a));
      s.dispose();
      await synchronize("cpu");
      expect(memoryStats("cpu").bytesInUse).toBe(before);
    },
  );

  test("img2img: setBeginIndex starts the sigma samplers mid-schedule, and addNoise uses that sigma", async () => {
    const s = createScheduler("euler", SD15);
    s.setTimesteps(10);
    s.setBeginIndex(4);
    const x = seededLatents(2);
    const z = seededLatents(3);
    const noisy = s.addNoise(x, z, s.timesteps[4]);
    const want = axpby(1, x, s.sigmas![4], z);
    expect(Array.from(await noisy.toFloat32Array())).toEqual(Array.from(await want.toFloat32Array()));
    const xin = s.scaleModelInput(noisy, s.timesteps[4]);
    expect(s.stepIndex).toBe(4);
    s.step(xin, s.timesteps[4], noisy).dispose();
    expect(s.stepIndex).toBe(5);
    for (const k of [x, z, noisy, want, xin]) k.dispose();
  });

  test("scaleModelInput of the identity samplers is a new handle (disposing it keeps the sample)", async () => {
    const s = createScheduler("ddim", SD15);
    s.setTimesteps(4);
    const x = seededLatents(4);
    const xin = s.scaleModelInput(x, s.timesteps[0]);
    expect(xin).not.toBe(x);
    xin.dispose();
    expect((await x.toFloat32Array()).length).toBe(256);
    x.dispose();
  });
});

describe("variants without reference data converge to the same ODE solution as the tested ones", () => {
  // The golden files cover the default variant of each class. The others are checked against a
  // 500-step run of a tested sampler on the same grid: at a few dozen steps they must land within
  // their discretisation error, which a wrong higher-order coefficient would exceed (first-order
  // solvers are 5-50x farther: dpm++ order 1 at 30 steps is 3.4e-2 off, UniPC order 1 4.3e-3).
  const TRAILING = { timestep_spacing: "trailing" }; // with 40 | 1000 steps, t - 1000/n is the next grid point
  const refs = new Map<string, Promise<Float32Array>>();
  const ref = (cls: SchedulerClassName, over: Record<string, unknown>): Promise<Float32Array> => {
    const key = `${cls}${JSON.stringify(over)}`;
    if (!refs.has(key)) refs.set(key, runLoop(schedulerFromConfig(cls, { ...SD15, ...over }), 500));
    return refs.get(key)!;
  };
  test.each([
    ["DPMSolverMultistepScheduler", { solver_type: "heun" }, 30, "DPMSolverMultistepScheduler", {}, 2e-3],
    ["UniPCMultistepScheduler", { solver_order: 3 }, 30, "UniPCMultistepScheduler", {}, 5e-4],
    ["UniPCMultistepScheduler", { solver_type: "bh1" }, 30, "UniPCMultistepScheduler", {}, 2e-3],
    ["HeunDiscreteScheduler", {}, 30, "DPMSolverMultistepScheduler", {}, 1e-2],
    ["LMSDiscreteScheduler", {}, 30, "DPMSolverMultistepScheduler", {}, 1e-2],
    ["PNDMScheduler", { ...TRAILING, skip_prk_steps: false }, 40, "PNDMScheduler", TRAILING, 2.5e-3], // DDIM: 2.5e-2
  ] as const)("%s %j, %i steps, vs 500 steps of %s %j", async (cls, over, n, refCls, refOver, tol) => {
    const a = await runLoop(schedulerFromConfig(cls, { ...SD15, ...over }), n);
    const d = relDiff(a, await ref(refCls, refOver));
    process.stderr.write(`[samplers] ${cls} ${JSON.stringify(over)} ${n} steps: ${d.toExponential(2)} from the 500-step ${refCls}\n`);
    expect(d).toBeLessThan(tol);
  });
});
