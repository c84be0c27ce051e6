/**
 * Typed scheduler configuration, read from a diffusers `scheduler_config.json`.
 *
 * The snake_case keys are mapped to camelCase once, here. As diffusers' `from_config` does, a class
 * reads only the keys its constructor takes and uses its own defaults for the rest (so the SD1.5
 * PNDM file, which has no `timestep_spacing`, gives "leading" for DDIM and "linspace" for Euler).
 * Values of keys that change the math are checked; an unknown value throws a RangeError that lists
 * the allowed ones. Defaults are those of diffusers 0.27.2.
 */

export type SchedulerClassName =
  | "DDPMScheduler"
  | "DDIMScheduler"
  | "PNDMScheduler"
  | "EulerDiscreteScheduler"
  | "EulerAncestralDiscreteScheduler"
  | "DPMSolverMultistepScheduler"
  | "LMSDiscreteScheduler"
  | "HeunDiscreteScheduler"
  | "UniPCMultistepScheduler"
  | "LCMScheduler";

export const SCHEDULER_CLASS_NAMES: readonly SchedulerClassName[] = [
  "DDPMScheduler",
  "DDIMScheduler",
  "PNDMScheduler",
  "EulerDiscreteScheduler",
  "EulerAncestralDiscreteScheduler",
  "DPMSolverMultistepScheduler",
  "LMSDiscreteScheduler",
  "HeunDiscreteScheduler",
  "UniPCMultistepScheduler",
  "LCMScheduler",
];

export type BetaSchedule = "linear" | "scaled_linear" | "squaredcos_cap_v2";
export type PredictionType = "epsilon" | "v_prediction" | "sample";
export type TimestepSpacing = "linspace" | "leading" | "trailing";
export type DpmAlgorithmType = "dpmsolver" | "dpmsolver++" | "sde-dpmsolver" | "sde-dpmsolver++";
export type SolverType = "midpoint" | "heun" | "bh1" | "bh2";

/** How set_timesteps builds its grid (and whether it has sigmas). */
export type SchedulerFamily = "ddpm" | "pndm" | "euler" | "dpm" | "lcm";

export function schedulerFamily(name: SchedulerClassName): SchedulerFamily {
  switch (name) {
    case "DDPMScheduler":
    case "DDIMScheduler":
      return "ddpm";
    case "PNDMScheduler":
      return "pndm";
    case "EulerDiscreteScheduler":
    case "EulerAncestralDiscreteScheduler":
    case "LMSDiscreteScheduler":
    case "HeunDiscreteScheduler":
      return "euler";
    case "DPMSolverMultistepScheduler":
    case "UniPCMultistepScheduler":
      return "dpm";
    case "LCMScheduler":
      return "lcm";
  }
}

/**
 * Every option any supported class reads. A class ignores the options it does not take; those keep
 * the neutral values of BASE below.
 */
export interface SchedulerConfig {
  readonly className: SchedulerClassName;
  readonly numTrainTimesteps: number;
  readonly betaStart: number;
  readonly betaEnd: number;
  readonly betaSchedule: BetaSchedule;
  readonly trainedBetas: readonly number[] | null;
  readonly predictionType: PredictionType;
  readonly timestepSpacing: TimestepSpacing;
  readonly stepsOffset: number;
  readonly rescaleBetasZeroSnr: boolean;
  /** DDIM/PNDM/LCM: alpha_prod at the step after the last is 1 (true) or alphas_cumprod[0] */
  readonly setAlphaToOne: boolean;
  readonly clipSample: boolean;
  readonly clipSampleRange: number;
  readonly thresholding: boolean;
  readonly dynamicThresholdingRatio: number;
  readonly sampleMaxValue: number;
  /** DDPM: fixed_small | fixed_small_log | fixed_large | fixed_large_log | learned | learned_range; DPM: null | learned | learned_range */
  readonly varianceType: string | null;
  readonly skipPrkSteps: boolean;
  readonly useKarrasSigmas: boolean;
  readonly sigmaMin: number | null;
  readonly sigmaMax: number | null;
  readonly interpolationType: "linear" | "log_linear";
  readonly timestepType: "discrete" | "continuous";
  readonly solverOrder: number;
  readonly algorithmType: DpmAlgorithmType;
  readonly solverType: SolverType;
  readonly lowerOrderFinal: boolean;
  readonly eulerAtFinal: boolean;
  readonly useLuLambdas: boolean;
  readonly finalSigmasType: "zero" | "sigma_min";
  readonly lambdaMinClipped: number;
  readonly predictX0: boolean;
  readonly disableCorrector: readonly number[];
  readonly originalInferenceSteps: number;
  readonly timestepScaling: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type Options = Omit<SchedulerConfig, "className">;

const BASE: Options = {
  numTrainTimesteps: 1000,
  betaStart: 0.0001,
  betaEnd: 0.02,
  betaSchedule: "linear",
  trainedBetas: null,
  predictionType: "epsilon",
  timestepSpacing: "linspace",
  stepsOffset: 0,
  rescaleBetasZeroSnr: false,
  setAlphaToOne: false,
  clipSample: false,
  clipSampleRange: 1.0,
  thresholding: false,
  dynamicThresholdingRatio: 0.995,
  sampleMaxValue: 1.0,
  varianceType: null,
  skipPrkSteps: false,
  useKarrasSigmas: false,
  sigmaMin: null,
  sigmaMax: null,
  interpolationType: "linear",
  timestepType: "discrete",
  solverOrder: 2,
  algorithmType: "dpmsolver++",
  solverType: "midpoint",
  lowerOrderFinal: true,
  eulerAtFinal: false,
  useLuLambdas: false,
  finalSigmasType: "zero",
  lambdaMinClipped: -Infinity,
  predictX0: true,
  disableCorrector: [],
  originalInferenceSteps: 50,
  timestepScaling: 10.0,
};

/** diffusers key -> SchedulerConfig field */
const KEY_MAP = {
  num_train_timesteps: "numTrainTimesteps",
  beta_start: "betaStart",
  beta_end: "betaEnd",
  beta_schedule: "betaSchedule",
  trained_betas: "trainedBetas",
  prediction_type: "predictionType",
  timestep_spacing: "timestepSpacing",
  steps_offset: "stepsOffset",
  rescale_betas_zero_snr: "rescaleBetasZeroSnr",
  set_alpha_to_one: "setAlphaToOne",
  clip_sample: "clipSample",
  clip_sample_range: "clipSampleRange",
  thresholding: "thresholding",
  dynamic_thresholding_ratio: "dynamicThresholdingRatio",
  sample_max_value: "sampleMaxValue",
  variance_type: "varianceType",
  skip_prk_steps: "skipPrkSteps",
  use_karras_sigmas: "useKarrasSigmas",
  sigma_min: "sigmaMin",
  sigma_max: "sigmaMax",
  interpolation_type: "interpolationType",
  timestep_type: "timestepType",
  solver_order: "solverOrder",
  algorithm_type: "algorithmType",
  solver_type: "solverType",
  lower_order_final: "lowerOrderFinal",
  euler_at_final: "eulerAtFinal",
  use_lu_lambdas: "useLuLambdas",
  final_sigmas_type: "finalSigmasType",
  lambda_min_clipped: "lambdaMinClipped",
  predict_x0: "predictX0",
  disable_corrector: "disableCorrector",
  solver_p: null, // only null is supported
  original_inference_steps: "originalInferenceSteps",
  timestep_scaling: "timestepScaling",
} as const satisfies Record<string, keyof Options | null>;

type DiffusersKey = keyof typeof KEY_MAP;

const COMMON: DiffusersKey[] = [
  "num_train_timesteps",
  "beta_start",
  "beta_end",
  "beta_schedule",
  "trained_betas",
  "prediction_type",
  "timestep_spacing",
  "steps_offset",
];
const THRESH: DiffusersKey[] = ["thresholding", "dynamic_thresholding_ratio", "sample_max_value"];

interface ClassSpec {
  keys: DiffusersKey[];
  defaults: Partial<Options>;
}

/** The constructor arguments and defaults of each class in diffusers 0.27.2. */
const CLASSES: Record<SchedulerClassName, ClassSpec> = {
  DDPMScheduler: {
    keys: [...COMMON, ...THRESH, "variance_type", "clip_sample", "clip_sample_range", "rescale_betas_zero_snr"],
    defaults: { varianceType: "fixed_small", clipSample: true, timestepSpacing: "leading" },
  },
  DDIMScheduler: {
    keys: [...COMMON, ...THRESH, "clip_sample", "clip_sample_range", "set_alpha_to_one", "rescale_betas_zero_snr"],
    defaults: { clipSample: true, setAlphaToOne: true, timestepSpacing: "leading" },
  },
  PNDMScheduler: {
    keys: [...COMMON, "skip_prk_steps", "set_alpha_to_one"],
    defaults: { timestepSpacing: "leading" },
  },
  EulerDiscreteScheduler: {
    keys: [...COMMON, "interpolation_type", "use_karras_sigmas", "sigma_min", "sigma_max", "timestep_type", "rescale_betas_zero_snr"],
    defaults: {},
  },
  EulerAncestralDiscreteScheduler: {
    keys: [...COMMON, "rescale_betas_zero_snr"],
    defaults: {},
  },
  DPMSolverMultistepScheduler: {
    keys: [
      ...COMMON,
      ...THRESH,
      "solver_order",
      "algorithm_type",
      "solver_type",
      "lower_order_final",
      "euler_at_final",
      "use_karras_sigmas",
      "use_lu_lambdas",
      "final_sigmas_type",
      "lambda_min_clipped",
      "variance_type",
      "rescale_betas_zero_snr",
    ],
    defaults: {},
  },
  LMSDiscreteScheduler: {
    keys: [...COMMON, "use_karras_sigmas"],
    defaults: {},
  },
  HeunDiscreteScheduler: {
    keys: [...COMMON, "use_karras_sigmas", "clip_sample", "clip_sample_range"],
    defaults: { betaStart: 0.00085, betaEnd: 0.012 },
  },
  UniPCMultistepScheduler: {
    keys: [
      ...COMMON,
      ...THRESH,
      "solver_order",
      "predict_x0",
      "solver_type",
      "lower_order_final",
      "disable_corrector",
      "solver_p",
      "use_karras_sigmas",
    ],
    defaults: { solverType: "bh2" },
  },
  LCMScheduler: {
    keys: [
      ...COMMON,
      ...THRESH,
      "original_inference_steps",
      "clip_sample",
      "clip_sample_range",
      "set_alpha_to_one",
      "timestep_scaling",
      "rescale_betas_zero_snr",
    ],
    defaults: {
      betaStart: 0.00085,
      betaEnd: 0.012,
      betaSchedule: "scaled_linear",
      setAlphaToOne: true,
      timestepSpacing: "leading",
    },
  },
};

/** The diffusers keys a class reads. */
export function schedulerConfigKeys(className: SchedulerClassName): readonly string[] {
  return CLASSES[className].keys;
}

/** A class's defaults (what `<Class>()` with no arguments has). */
export function defaultSchedulerConfig(className: SchedulerClassName): SchedulerConfig {
  return parseSchedulerConfig({}, className);
}

function fail(cls: string, key: string, allowed: readonly unknown[], got: unknown): never {
  throw new RangeError(
    `${cls}: ${key} must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${JSON.stringify(got)}`,
  );
}

function oneOf<T extends string>(cls: string, key: string, v: unknown, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) fail(cls, key, allowed, v);
  return v as T;
}

function num(cls: string, key: string, v: unknown, opts: { int?: boolean; min?: number; nullable?: boolean } = {}): number {
  if (typeof v !== "number" || Number.isNaN(v)) throw new TypeError(`${cls}: ${key} must be a number, got ${JSON.stringify(v)}`);
  if (opts.int && !Number.isInteger(v)) throw new RangeError(`${cls}: ${key} must be an integer, got ${v}`);
  if (opts.min !== undefined && v < opts.min) throw new RangeError(`${cls}: ${key} must be >= ${opts.min}, got ${v}`);
  return v;
}

function bool(cls: string, key: string, v: unknown): boolean {
  if (typeof v !== "boolean") throw new TypeError(`${cls}: ${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Build a SchedulerConfig from a parsed scheduler_config.json (or a plain object of diffusers keys).
 * `className` overrides `_class_name`, as `<Class>.from_config(other.config)` does.
 */
export function parseSchedulerConfig(raw: Record<string, unknown>, className?: SchedulerClassName): SchedulerConfig {
  const name = className ?? raw["_class_name"];
  if (!SCHEDULER_CLASS_NAMES.includes(name as SchedulerClassName)) fail("parseSchedulerConfig", "_class_name", SCHEDULER_CLASS_NAMES, name);
  const cls = name as SchedulerClassName;
  const spec = CLASSES[cls];
  const c: Mutable<SchedulerConfig> = { className: cls, ...BASE, ...spec.defaults };

  for (const key of spec.keys) {
    if (!(key in raw)) continue;
    const v = raw[key];
    switch (key) {
      case "num_train_timesteps":
        c.numTrainTimesteps = num(cls, key, v, { int: true, min: 2 });
        break;
      case "beta_start":
      case "beta_end":
        c[KEY_MAP[key]] = num(cls, key, v, { min: 0 });
        break;
      case "beta_schedule":
        if (v === "sigmoid") throw new RangeError(`${cls}: beta_schedule "sigmoid" is not supported; use one of "linear", "scaled_linear", "squaredcos_cap_v2"`);
        c.betaSchedule = oneOf(cls, key, v, ["linear", "scaled_linear", "squaredcos_cap_v2"] as const);
        break;
      case "trained_betas":
        if (v === null) c.trainedBetas = null;
        else if (Array.isArray(v) && v.every((b) => typeof b === "number" && b >= 0 && b <= 1)) c.trainedBetas = v.slice();
        else throw new TypeError(`${cls}: trained_betas must be null or an array of numbers in [0, 1]`);
        break;
      case "prediction_type":
        c.predictionType = oneOf(cls, key, v, ["epsilon", "v_prediction", "sample"] as const);
        break;
      case "timestep_spacing":
        c.timestepSpacing = oneOf(cls, key, v, ["linspace", "leading", "trailing"] as const);
        break;
      case "steps_offset":
        c.stepsOffset = num(cls, key, v, { int: true, min: 0 });
        break;
      case "solver_order":
        c.solverOrder = num(cls, key, v, { int: true, min: 1 });
        break;
      case "original_inference_steps":
        c.originalInferenceSteps = num(cls, key, v, { int: true, min: 1 });
        break;
      case "clip_sample_range":
      case "dynamic_thresholding_ratio":
      case "sample_max_value":
      case "timestep_scaling":
        c[KEY_MAP[key]] = num(cls, key, v);
        break;
      case "lambda_min_clipped":
        c.lambdaMinClipped = num(cls, key, v);
        break;
      case "sigma_min":
      case "sigma_max":
        c[KEY_MAP[key]] = v === null ? null : num(cls, key, v, { min: 0 });
        break;
      case "rescale_betas_zero_snr":
      case "set_alpha_to_one":
      case "clip_sample":
      case "thresholding":
      case "skip_prk_steps":
      case "use_karras_sigmas":
      case "lower_order_final":
      case "euler_at_final":
      case "use_lu_lambdas":
      case "predict_x0":
        c[KEY_MAP[key]] = bool(cls, key, v);
        break;
      case "variance_type":
        c.varianceType =
          cls === "DDPMScheduler"
            ? oneOf(cls, key, v, ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"] as const)
            : v === null
              ? null
              : oneOf(cls, key, v, ["learned", "learned_range"] as const);
        break;
      case "interpolation_type":
        c.interpolationType = oneOf(cls, key, v, ["linear", "log_linear"] as const);
        break;
      case "timestep_type":
        c.timestepType = oneOf(cls, key, v, ["discrete", "continuous"] as const);
        break;
      case "algorithm_type":
        // diffusers registers "deis" as "dpmsolver++"
        c.algorithmType = v === "deis" ? "dpmsolver++" : oneOf(cls, key, v, ["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"] as const) as DpmAlgorithmType;
        break;
      case "solver_type":
        if (cls === "UniPCMultistepScheduler") {
          // diffusers maps the DPM-Solver names onto bh2
          const s = oneOf(cls, key, v, ["bh1", "bh2", "midpoint", "heun", "logrho"] as const);
          c.solverType = s === "bh1" ? "bh1" : "bh2";
        } else {
          // and the UniPC names onto midpoint
          const s = oneOf(cls, key, v, ["midpoint", "heun", "logrho", "bh1", "bh2"] as const);
          c.solverType = s === "heun" ? "heun" : "midpoint";
        }
        break;
      case "final_sigmas_type":
        c.finalSigmasType = oneOf(cls, key, v, ["zero", "sigma_min"] as const);
        break;
      case "disable_corrector":
        if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) {
          throw new TypeError(`${cls}: disable_corrector must be an array of step indices`);
        }
        c.disableCorrector = v.slice();
        break;
      case "solver_p":
        if (v !== null) throw new RangeError(`${cls}: solver_p must be null (a custom solver is not supported), got ${JSON.stringify(v)}`);
        break;
    }
  }
  if (c.trainedBetas && c.trainedBetas.length !== c.numTrainTimesteps) {
    throw new RangeError(`${cls}: trained_betas has ${c.trainedBetas.length} entries but num_train_timesteps is ${c.numTrainTimesteps}`);
  }
  if (cls === "DPMSolverMultistepScheduler") {
    if ((c.algorithmType === "dpmsolver" || c.algorithmType === "sde-dpmsolver") && c.finalSigmasType === "zero") {
      throw new RangeError(`${cls}: final_sigmas_type "zero" is not supported for algorithm_type "${c.algorithmType}"; use "sigma_min"`);
    }
    if (c.useKarrasSigmas && c.useLuLambdas) {
      throw new RangeError(`${cls}: use_karras_sigmas and use_lu_lambdas cannot both be true`);
    }
  }
  return Object.freeze(c);
}

/**
 * JSON.parse for diffusers config files: Python's json module writes NaN, Infinity and -Infinity
 * as bare tokens (e.g. `"lambda_min_clipped": -Infinity`), which JSON.parse rejects.
 */
export function parseDiffusersJson(text: string): Record<string, unknown> {
  let out = "";
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      out += ch;
      if (ch === "\\") out += text[++i] ?? "";
      else if (ch === '"') inString = false;
      continue;
    }
    if (ch === '"') {
      inString = true;
      out += ch;
      continue;
    }
    const rest = text.startsWith("-Infinity", i) ? "-Infinity" : text.startsWith("Infinity", i) ? "Infinity" : text.startsWith("NaN", i) ? "NaN" : null;
    if (rest) {
      out += `"\\u0000${rest}"`;
      i += rest.length - 1;
      continue;
    }
    out += ch;
  }
  const special: Record<string, number> = { "\u0000-Infinity": -Infinity, "\u0000Infinity": Infinity, "\u0000NaN": NaN };
  const parsed: unknown = JSON.parse(out, (_k, v) => (typeof v === "string" && v in special ? special[v] : v));
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new TypeError("parseDiffusersJson: a scheduler config must be a JSON object");
  }
  return parsed as Record<string, unknown>;
}

/** Read a scheduler_config.json text. */
export function schedulerConfigFromJson(text: string, className?: SchedulerClassName): SchedulerConfig {
  return parseSchedulerConfig(parseDiffusersJson(text), className);
}
