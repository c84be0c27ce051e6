/**
 * Samplers by the names users type ("euler-a", "dpm++2m-karras", ...), built from a pipeline's
 * scheduler config with diffusers' `<Class>.from_config` semantics, plus the classes themselves.
 */
import { SchedulerClassName } from "./schedule";
import { Scheduler, SchedulerConfigInput, diffusersConfigFor } from "./scheduler";
import { DDPMScheduler } from "./ddpm";
import { DDIMScheduler } from "./ddim";
import { PNDMScheduler } from "./pndm";
import { EulerDiscreteScheduler } from "./euler";
import { EulerAncestralDiscreteScheduler } from "./euler-ancestral";
import { HeunDiscreteScheduler } from "./heun";
import { LMSDiscreteScheduler } from "./lms";
import { DPMSolverMultistepScheduler } from "./dpm-solver";
import { UniPCMultistepScheduler } from "./unipc";
import { LCMScheduler } from "./lcm";

export * from "./scheduler";
export { dynamicThreshold, rowQuantileAbs } from "./thresholding";
export { DDPMScheduler, DDPM_VARIANCE_TYPES } from "./ddpm";
export { DDIMScheduler } from "./ddim";
export { PNDMScheduler } from "./pndm";
export { EulerDiscreteScheduler } from "./euler";
export { EulerAncestralDiscreteScheduler } from "./euler-ancestral";
export { HeunDiscreteScheduler } from "./heun";
export { LMSDiscreteScheduler, lmsCoefficient } from "./lms";
export { DPMSolverMultistepScheduler, DPM_ALGORITHM_TYPES, DPM_SOLVER_ORDERS, dataPrediction } from "./dpm-solver";
export { UniPCMultistepScheduler, UNIPC_SOLVER_ORDERS } from "./unipc";
export { LCMScheduler } from "./lcm";

export const SAMPLER_NAMES = [
  "ddim",
  "ddpm",
  "pndm",
  "euler",
  "euler-a",
  "heun",
  "lms",
  "dpm++2m",
  "dpm++2m-karras",
  "dpm++2m-sde-karras",
  "unipc",
  "lcm",
] as const;

export type SamplerName = (typeof SAMPLER_NAMES)[number];

/** Each name: the diffusers class, and the options the name itself fixes (diffusers keys). */
const SAMPLERS: Record<SamplerName, { className: SchedulerClassName; fixed: Record<string, unknown> }> = {
  ddim: { className: "DDIMScheduler", fixed: {} },
  ddpm: { className: "DDPMScheduler", fixed: {} },
  pndm: { className: "PNDMScheduler", fixed: {} },
  euler: { className: "EulerDiscreteScheduler", fixed: {} },
  "euler-a": { className: "EulerAncestralDiscreteScheduler", fixed: {} },
  heun: { className: "HeunDiscreteScheduler", fixed: {} },
  lms: { className: "LMSDiscreteScheduler", fixed: {} },
  "dpm++2m": {
    className: "DPMSolverMultistepScheduler",
    fixed: { algorithm_type: "dpmsolver++", solver_order: 2, use_karras_sigmas: false },
  },
  "dpm++2m-karras": {
    className: "DPMSolverMultistepScheduler",
    fixed: { algorithm_type: "dpmsolver++", solver_order: 2, use_karras_sigmas: true },
  },
  "dpm++2m-sde-karras": {
    className: "DPMSolverMultistepScheduler",
    fixed: { algorithm_type: "sde-dpmsolver++", solver_order: 2, use_karras_sigmas: true },
  },
  unipc: { className: "UniPCMultistepScheduler", fixed: {} },
  lcm: { className: "LCMScheduler", fixed: {} },
};

type SchedulerCtor = new (config?: SchedulerConfigInput) => Scheduler;

const CLASSES: Record<SchedulerClassName, SchedulerCtor> = {
  DDPMScheduler,
  DDIMScheduler,
  PNDMScheduler,
  EulerDiscreteScheduler,
  EulerAncestralDiscreteScheduler,
  HeunDiscreteScheduler,
  LMSDiscreteScheduler,
  DPMSolverMultistepScheduler,
  UniPCMultistepScheduler,
  LCMScheduler,
};

/** The sampler class for a diffusers class name (`<Class>.from_config(config)`). */
export function schedulerFromConfig(className: SchedulerClassName, config: SchedulerConfigInput = {}): Scheduler {
  const Ctor = CLASSES[className];
  if (!Ctor) {
    throw new RangeError(`schedulerFromConfig: className must be one of ${Object.keys(CLASSES).map((k) => `"${k}"`).join(", ")}, got ${JSON.stringify(className)}`);
  }
  return new Ctor(config);
}

/**
 * A sampler by user name, built from a pipeline's scheduler config (a scheduler_config.json
 * object or a SchedulerConfig; keys the class does not take are ignored, missing ones take the
 * class's defaults) with `overrides` (diffusers keys, e.g. `{ timestep_spacing: "trailing" }`)
 * applied on top; the options a name fixes (e.g. Karras sigmas for "dpm++2m-karras") win.
 */
export function createScheduler(name: string, config: SchedulerConfigInput = {}, overrides: Readonly<Record<string, unknown>> = {}): Scheduler {
  if (typeof name !== "string" || !Object.prototype.hasOwnProperty.call(SAMPLERS, name)) {
    throw new RangeError(`createScheduler: sampler must be one of ${SAMPLER_NAMES.map((n) => `"${n}"`).join(", ")}, got ${JSON.stringify(name)}`);
  }
  const { className, fixed } = SAMPLERS[name as SamplerName];
  const raw = { ...diffusersConfigFor(className, config), ...overrides, ...fixed };
  return new CLASSES[className](raw);
}
