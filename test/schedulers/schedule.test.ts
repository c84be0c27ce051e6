import * as fs from "fs";
import {
  SchedulerClassName,
  SchedulerConfig,
  defaultSchedulerConfig,
  noiseSchedule,
  parseSchedulerConfig,
  schedulerConfigFromJson,
  setTimesteps,
  npArange,
  npLinspace,
  torchLinspaceF32,
  rescaleZeroTerminalSnr,
  makeBetas,
  parseDiffusersJson,
} from "../../lib/schedulers/schedule";
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
  config: Record<string, unknown> & { _use_default_values: string[] };
  init_noise_sigma: number;
  timesteps: number[];
  alphas_cumprod: string;
  tensors: Record<string, TensorInfo>;
}

const camel = (k: string): string => k.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());

function relErr(a: number, b: number): number {
  if (a === b) return 0;
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);
}

describeIfReference("noise schedules vs diffusers 0.27.2 (cases/schedulers)", () => {
  const dir = referencePath("cases", "schedulers");
  // Python's json writes lambda_min_clipped as a bare -Infinity
  const manifest = parseDiffusersJson(fs.readFileSync(`${dir}/manifest.json`, "utf8")) as unknown as { cases: Case[] };
  const files = new Map<string, SafetensorsFile>();
  const file = (f: string): SafetensorsFile => {
    let st = files.get(f);
    if (!st) files.set(f, (st = SafetensorsFile.read(`${dir}/${f}`)));
    return st;
  };
  const summary: string[] = [];
  let exactGroups = 0;
  afterAll(() => {
    const rest = summary.length ? `; not bit-exact:\n${summary.join("\n")}` : "";
    process.stderr.write(`[schedule] ${exactGroups} variants bit-exact (alphas_cumprod, timesteps, sigmas, init_noise_sigma)${rest}\n`);
  });

  test("the manifest holds 250 cases over 10 classes", () => {
    expect(manifest.cases.length).toBe(250);
    expect(new Set(manifest.cases.map((c) => c.scheduler)).size).toBe(10);
  });

  test("class defaults equal the values diffusers filled in (_use_default_values)", () => {
    const seen = new Set<string>();
    for (const c of manifest.cases) {
      const d = defaultSchedulerConfig(c.scheduler) as unknown as Record<string, unknown>;
      for (const key of c.config._use_default_values ?? []) {
        const want = c.config[key];
        const got = d[camel(key)];
        if (key === "solver_p") continue; // only null is supported; parse checks it
        const tag = `${c.scheduler}.${key}`;
        if (seen.has(tag)) continue;
        seen.add(tag);
        if (want === null || typeof want !== "number") expect([tag, got]).toEqual([tag, want]);
        else expect([tag, Object.is(got, want) || got === want]).toEqual([tag, true]);
      }
    }
    expect(seen.size).toBeGreaterThan(40);
  });

  // One test per (class, variant): alphas_cumprod bit-exact; per step count timesteps, sigmas, init_noise_sigma.
  const groups = new Map<string, Case[]>();
  for (const c of manifest.cases) {
    const key = `${c.scheduler}/${c.variant}`;
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }

  for (const [key, cases] of groups) {
    test(`${key}: alphas_cumprod, timesteps, sigmas, init_noise_sigma`, () => {
      const first = cases[0];
      const config: SchedulerConfig = parseSchedulerConfig(first.config, first.scheduler);
      const sched = noiseSchedule(config);
      const st = file(first.file);
      const acRef = st.get(first.alphas_cumprod).data as Float32Array;
      let acBad = 0;
      let acWorst = 0;
      for (let i = 0; i < acRef.length; i++) {
        if (!Object.is(sched.alphasCumprod[i], acRef[i])) acBad++;
        acWorst = Math.max(acWorst, relErr(sched.alphasCumprod[i], acRef[i]));
      }
      expect([key, "alphas_cumprod mismatches", acBad]).toEqual([key, "alphas_cumprod mismatches", 0]);

      let tWorst = 0;
      let sWorst = 0;
      let sBitDiff = 0;
      for (const c of cases) {
        const ts = setTimesteps(config, c.num_inference_steps, sched);
        const tInfo = c.tensors.timesteps;
        const tRef = st.numbers(tInfo.name);
        expect([c.id, ts.timestepDtype, ts.timesteps.length]).toEqual([c.id, tInfo.dtype, tRef.length]);
        for (let i = 0; i < tRef.length; i++) {
          const d = Math.abs(ts.timesteps[i] - tRef[i]);
          tWorst = Math.max(tWorst, d);
          if (tInfo.dtype === "int64") {
            if (d !== 0) throw new Error(`${c.id}: timesteps[${i}] = ${ts.timesteps[i]}, want ${tRef[i]}`);
          } else if (d > 1e-4) {
            throw new Error(`${c.id}: timesteps[${i}] = ${ts.timesteps[i]}, want ${tRef[i]} (|diff| ${d})`);
          }
        }
        const sInfo = c.tensors.sigmas;
        if (sInfo) {
          const sRef = st.get(sInfo.name).data as Float32Array;
          expect(ts.sigmas).not.toBeNull();
          expect([c.id, ts.sigmas!.length]).toEqual([c.id, sRef.length]);
          for (let i = 0; i < sRef.length; i++) {
            const e = relErr(ts.sigmas![i], sRef[i]);
            if (ts.sigmas![i] !== sRef[i]) sBitDiff++;
            sWorst = Math.max(sWorst, e);
            if (e > 1e-6) throw new Error(`${c.id}: sigmas[${i}] = ${ts.sigmas![i]}, want ${sRef[i]} (rel ${e})`);
          }
        } else {
          expect([c.id, ts.sigmas]).toEqual([c.id, null]);
        }
        const ie = relErr(ts.initNoiseSigma, c.init_noise_sigma);
        if (ie > 1e-6) throw new Error(`${c.id}: init_noise_sigma ${ts.initNoiseSigma}, want ${c.init_noise_sigma}`);
        if (ie !== 0) sBitDiff++;
      }
      exactGroups++;
      if (tWorst !== 0 || sBitDiff !== 0) {
        exactGroups--;
        summary.push(
          `  ${key}: timesteps max|diff| ${tWorst.toExponential(1)}; sigmas max rel ${sWorst.toExponential(1)} (${sBitDiff} not bit-exact)`,
        );
      }
      // Beyond the README's tolerances: every variant is currently bit-exact, so any drift is a regression.
      expect([key, tWorst, sBitDiff]).toEqual([key, 0, 0]);
    });
  }
});

describe("schedule building blocks", () => {
  test("npArange reproduces numpy's fill (including the extra point of arange(1000, 0, -1000/61))", () => {
    expect(Array.from(npArange(1000, 0, -1000 / 7)).length).toBe(7);
    expect(npArange(1000, 0, -1000 / 61).length).toBe(62);
    expect(Array.from(npArange(1000, 0, -250))).toEqual([1000, 750, 500, 250]);
  });

  test("npLinspace endpoints and single point", () => {
    expect(Array.from(npLinspace(0, 999, 7))).toEqual([0, 166.5, 333, 499.5, 666, 832.5, 999]);
    expect(Array.from(npLinspace(0, 1, 1))).toEqual([0]);
    expect(Array.from(npLinspace(0, 50, 4, false))).toEqual([0, 12.5, 25, 37.5]);
  });

  test("torchLinspaceF32 ends exactly at start and end", () => {
    const l = torchLinspaceF32(0.0001, 0.02, 1000);
    expect(l[0]).toBe(Math.fround(0.0001));
    expect(l[999]).toBe(Math.fround(0.02));
    expect(Array.from(torchLinspaceF32(3, 5, 1))).toEqual([3]);
  });

  test("zero-SNR rescale: last alpha_bar is 0, first unchanged", () => {
    const betas = makeBetas({ numTrainTimesteps: 1000, betaStart: 0.00085, betaEnd: 0.012, betaSchedule: "scaled_linear" });
    const r = rescaleZeroTerminalSnr(betas);
    expect(r[999]).toBe(1);
    expect(Math.abs(r[0] - betas[0])).toBeLessThan(1e-7);
  });

  test("Euler with zero SNR keeps alphas_cumprod[-1] = 2^-24; DDIM keeps 0", () => {
    const raw = { beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012, rescale_betas_zero_snr: true };
    expect(noiseSchedule(parseSchedulerConfig(raw, "EulerDiscreteScheduler")).alphasCumprod[999]).toBe(2 ** -24);
    expect(noiseSchedule(parseSchedulerConfig(raw, "DDIMScheduler")).alphasCumprod[999]).toBe(0);
  });

  test("from_config semantics: keys a class does not take are ignored, missing ones take the class default", () => {
    const sd15 = {
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
    expect(parseSchedulerConfig(sd15).timestepSpacing).toBe("leading");
    expect(parseSchedulerConfig(sd15, "EulerDiscreteScheduler").timestepSpacing).toBe("linspace");
    const ddim = parseSchedulerConfig(sd15, "DDIMScheduler");
    expect([ddim.clipSample, ddim.setAlphaToOne, ddim.stepsOffset]).toEqual([false, false, 1]);
    expect(Array.from(setTimesteps(ddim, 5).timesteps)).toEqual([801, 601, 401, 201, 1]);
    expect(Array.from(setTimesteps(parseSchedulerConfig(sd15), 5).timesteps)).toEqual([801, 601, 601, 401, 201, 1]);
  });

  test("bad option values throw RangeError listing the allowed ones", () => {
    expect(() => parseSchedulerConfig({ beta_schedule: "cosine" }, "DDIMScheduler")).toThrow(
      /beta_schedule must be one of "linear", "scaled_linear", "squaredcos_cap_v2", got "cosine"/,
    );
    expect(() => parseSchedulerConfig({ timestep_spacing: "middle" }, "EulerDiscreteScheduler")).toThrow(RangeError);
    expect(() => parseSchedulerConfig({ prediction_type: "x0" }, "DDPMScheduler")).toThrow(RangeError);
    expect(() => parseSchedulerConfig({ algorithm_type: "dpmsolver" }, "DPMSolverMultistepScheduler")).toThrow(/sigma_min/);
    expect(() => parseSchedulerConfig({ _class_name: "FooScheduler" })).toThrow(RangeError);
    expect(() => parseSchedulerConfig({ steps_offset: 0.5 }, "DDIMScheduler")).toThrow(RangeError);
    expect(() => parseSchedulerConfig({ clip_sample: "no" }, "DDIMScheduler")).toThrow(TypeError);
    expect(() => setTimesteps(defaultSchedulerConfig("DDIMScheduler"), 0)).toThrow(RangeError);
    expect(() => setTimesteps(defaultSchedulerConfig("LCMScheduler"), 51)).toThrow(RangeError);
  });

  test("diffusers JSON with -Infinity parses", () => {
    const c = schedulerConfigFromJson(
      '{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "note": "-Infinity stays text", "algorithm_type": "deis"}',
    );
    expect(c.lambdaMinClipped).toBe(-Infinity);
    expect(c.algorithmType).toBe("dpmsolver++");
  });
});
