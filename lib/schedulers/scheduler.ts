/**
 * The contract every sampler in lib/schedulers/ implements, and the pieces they share: config
 * resolution (diffusers' `from_config`), step-index bookkeeping, noise draws in diffusers' order,
 * ownership of the history tensors, and the x0 / (alpha, sigma) conversions.
 *
 * Precision: the per-step update runs as fused native float32 ops (`axpby`, at most three tensor
 * terms per pass). The scalar coefficients are computed in JS in the precision diffusers uses:
 * `alphas_cumprod[t]`, `sigmas[i]` and everything derived from them are 0-d float32 torch tensors
 * there, so each scalar operation is rounded with Math.fround (see docs/schedulers-notes.md).
 * Folding two float32 scalars into one axpby coefficient is done in float64 and rounded once.
 */
import { Tensor, keep, tidy } from "../tensor";
import { axpby, clamp, div } from "../ops";
import { TorchGenerator } from "../random/torch-generator";
import {
  NoiseSchedule,
  SchedulerClassName,
  SchedulerConfig,
  SetTimestepsOptions,
  TimestepDtype,
  TimestepSchedule,
  defaultSchedulerConfig,
  noiseSchedule,
  parseSchedulerConfig,
  setTimesteps as buildTimesteps,
} from "./schedule";
import { dynamicThreshold } from "./thresholding";

// ---------------------------------------------------------------------------------------------
// public types

/** Anything that draws standard normal float32 values in torch's order; TorchGenerator is one. */
export interface NoiseSource {
  randn(shape: readonly number[]): Float32Array;
}

export interface StepOptions {
  /**
   * Where stochastic samplers draw their noise: one generator (`g.randn(modelOutput.shape)`, as
   * diffusers' randn_tensor) or one per batch item. Default: a generator the scheduler seeds at random.
   */
  generator?: NoiseSource | readonly NoiseSource[];
  /** Use this noise (shape of the sample) instead of drawing it (diffusers' DDIM `variance_noise`). */
  noise?: Tensor;
  /** DDIM: eta, the weight of the stochastic part (0 = deterministic DDIM, 1 = DDPM-like). Default 0. */
  eta?: number;
  /** DDIM: re-derive the noise prediction from the clipped x0 (GLIDE). Default false. */
  useClippedModelOutput?: boolean;
  /** Euler: Karras et al. 2022 "churn" (Algorithm 2: S_churn, S_tmin, S_tmax, S_noise). Defaults 0, 0, inf, 1. */
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
  /** LMS: the order of the linear multistep method (1-4). Default 4. */
  order?: number;
}

export interface StepOutput {
  /** x_{t-1}: the sample for the next iteration (owned by the caller). */
  prevSample: Tensor;
  /** The model's estimate of x0 at this step, where the sampler forms one. */
  predOriginalSample?: Tensor;
  /** LCM: the boundary-condition output c_skip·x + c_out·x0 (the pipeline decodes the last one). */
  denoised?: Tensor;
}

export interface Scheduler {
  readonly className: SchedulerClassName;
  readonly config: SchedulerConfig;
  /** The timesteps to hand to the model, in loop order (valid after setTimesteps). */
  readonly timesteps: readonly number[];
  /** How diffusers keeps them: "int64" ones are integers, Euler-type ones float32 or float64. */
  readonly timestepDtype: TimestepDtype;
  /** The sigma grid of sigma-based samplers (float32, one more entry than steps), else null. */
  readonly sigmas: Float32Array | null;
  /** The initial latents are x_T · initNoiseSigma (valid after setTimesteps). */
  readonly initNoiseSigma: number;
  /** Model calls per step of the method (2 for Heun); diffusers' `order`. */
  readonly order: number;
  readonly numInferenceSteps: number | null;
  /** Index of the next step for the index-driven samplers; null until the first step. */
  readonly stepIndex: number | null;
  readonly alphasCumprod: Float32Array;
  setTimesteps(numInferenceSteps: number, options?: SetTimestepsOptions): void;
  /** img2img: start at timesteps[index] (diffusers' set_begin_index). */
  setBeginIndex(index: number): void;
  /** The model input for `sample` at `timestep` (a new handle; it may share storage with `sample`). */
  scaleModelInput(sample: Tensor, timestep: number): Tensor;
  /** One sampler step; returns prev_sample (owned by the caller). */
  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts?: StepOptions): Tensor;
  /** step() that also returns x0 / denoised. Tensors of the result may alias each other. */
  stepOutput(modelOutput: Tensor, timestep: number, sample: Tensor, opts?: StepOptions): StepOutput;
  /** Forward process q(x_t | x_0) at `timestep`. */
  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor;
  /** Forget the step state and history (keeps the timesteps), freeing held tensors. */
  reset(): void;
  /** Free the tensors the scheduler holds. */
  dispose(): void;
}

/** A SchedulerConfig, or a diffusers scheduler_config.json object (snake_case keys). */
export type SchedulerConfigInput = SchedulerConfig | Readonly<Record<string, unknown>>;

// ---------------------------------------------------------------------------------------------
// config resolution

function isSchedulerConfig(c: SchedulerConfigInput): c is SchedulerConfig {
  return typeof (c as SchedulerConfig).className === "string" && "numTrainTimesteps" in c;
}

const snake = (k: string): string => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/**
 * A diffusers-keyed dict for building `className` from `input`, as `<Class>.from_config(config)`
 * does: keys diffusers filled in with the source class's defaults (`_use_default_values`) are
 * dropped so the target class uses its own defaults. For a SchedulerConfig of another class, the
 * fields equal to that class's defaults stand in for `_use_default_values`.
 */
export function diffusersConfigFor(className: SchedulerClassName, input: SchedulerConfigInput = {}): Record<string, unknown> {
  if (isSchedulerConfig(input)) {
    const defaults = defaultSchedulerConfig(input.className) as unknown as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(input)) {
      if (k === "className") continue;
      if (input.className !== className && JSON.stringify(defaults[k]) === JSON.stringify(v)) continue;
      out[snake(k)] = v;
    }
    return out;
  }
  const out: Record<string, unknown> = { ...input };
  const useDefaults = out["_use_default_values"];
  if (Array.isArray(useDefaults)) for (const k of useDefaults) if (typeof k === "string") delete out[k];
  delete out["_use_default_values"];
  delete out["_class_name"];
  return out;
}

/** The SchedulerConfig a sampler of class `className` gets from `input`. */
export function resolveConfig(className: SchedulerClassName, input: SchedulerConfigInput = {}): SchedulerConfig {
  if (isSchedulerConfig(input) && input.className === className) return input;
  return parseSchedulerConfig(diffusersConfigFor(className, input), className);
}

// ---------------------------------------------------------------------------------------------
// float32 scalar arithmetic (0-d float32 torch tensors in diffusers)

export const f32 = Math.fround;
export const fsqrt = (x: number): number => f32(Math.sqrt(x));
export const flog = (x: number): number => f32(Math.log(x));
export const fexp = (x: number): number => f32(Math.exp(x));
export const fexpm1 = (x: number): number => f32(Math.expm1(x));

/**
 * Variance-preserving (alpha_t, sigma_t) of a variance-exploding sigma: alpha_t = 1/sqrt(sigma^2 + 1),
 * sigma_t = sigma·alpha_t, and the half log-SNR lambda_t = log(alpha_t) - log(sigma_t)
 * (Lu et al. 2022, DPM-Solver, eq. 3). lambda is +inf at sigma = 0.
 */
export function alphaSigma(sigma: number): { alpha: number; sigma: number; lambda: number } {
  const alpha = f32(1 / fsqrt(f32(f32(sigma * sigma) + 1)));
  const s = f32(sigma * alpha);
  return { alpha, sigma: s, lambda: f32(flog(alpha) - flog(s)) };
}

/** A fresh copy (history and results never alias the caller's tensors). */
export const copyOf = (x: Tensor): Tensor => axpby(1, x);

/** A new handle on x's data: a view when x is contiguous, else a contiguous copy. */
export const newHandle = (x: Tensor): Tensor => (x.isContiguous ? x.reshape(x.shape) : x.contiguous());

/**
 * x0 from a model output with sqrt(alpha_bar_t) = sqrtA, sqrt(1 - alpha_bar_t) = sqrtB (float32):
 * epsilon: x0 = (x - sqrtB·eps)/sqrtA (Ho et al. 2020, eq. 15); v: x0 = sqrtA·x - sqrtB·v
 * (Salimans & Ho 2022, "Progressive Distillation", §4 / appendix D); sample: the output itself.
 */
export function x0FromAlphaBar(type: SchedulerConfig["predictionType"], x: Tensor, m: Tensor, sqrtA: number, sqrtB: number): Tensor {
  switch (type) {
    case "epsilon":
      return axpby(1 / sqrtA, x, -sqrtB / sqrtA, m);
    case "v_prediction":
      return axpby(sqrtA, x, -sqrtB, m);
    case "sample":
      return copyOf(m);
  }
}

/**
 * x0 from a model output at noise level sigma of the variance-exploding form x = x0 + sigma·eps
 * (Karras et al. 2022, eq. 7 with c_skip/c_out of the VP model): epsilon: x0 = x - sigma·eps;
 * v: x0 = x/(sigma^2 + 1) - sigma/sqrt(sigma^2 + 1)·v; sample: the output itself.
 */
export function x0FromSigma(type: SchedulerConfig["predictionType"], x: Tensor, m: Tensor, sigma: number): Tensor {
  switch (type) {
    case "epsilon":
      return axpby(1, x, -sigma, m);
    case "v_prediction": {
      const s2p1 = f32(f32(sigma * sigma) + 1);
      const cOut = f32(-sigma / fsqrt(s2p1));
      return axpby(1 / s2p1, x, cOut, m);
    }
    case "sample":
      return copyOf(m);
  }
}

/**
 * sum_k c_k·t_k as chained fused passes (three terms in the first, two more in each further one).
 * Zero coefficients are skipped; an empty sum is an error.
 */
export function linearCombination(terms: ReadonlyArray<readonly [number, Tensor]>): Tensor {
  const live = terms.filter(([c]) => c !== 0);
  if (live.length === 0) {
    if (terms.length === 0) throw new RangeError("linearCombination: no terms");
    return axpby(0, terms[0][1]);
  }
  const [a, b, c] = live;
  let acc = axpby(a[0], a[1], b ? b[0] : 0, b?.[1], c ? c[0] : 0, c?.[1]);
  for (let i = 3; i < live.length; i += 2) {
    const p = live[i];
    const q = live[i + 1];
    const next = axpby(1, acc, p[0], p[1], q ? q[0] : 0, q?.[1]);
    acc.dispose();
    acc = next;
  }
  return acc;
}

/** Solves the small dense system A·x = b (Gaussian elimination with partial pivoting, float64). */
export function solveSmall(A: readonly (readonly number[])[], b: readonly number[]): number[] {
  const n = b.length;
  const M = A.map((row, i) => [...row.slice(0, n), b[i]]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r][c]) > Math.abs(M[p][c])) p = r;
    [M[c], M[p]] = [M[p], M[c]];
    if (M[c][c] === 0) throw new RangeError("solveSmall: singular system");
    for (let r = c + 1; r < n; r++) {
      const k = M[r][c] / M[c][c];
      for (let j = c; j <= n; j++) M[r][j] -= k * M[c][j];
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = M[r][n];
    for (let j = r + 1; j < n; j++) s -= M[r][j] * x[j];
    x[r] = s / M[r][r];
  }
  return x;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const shapeStr = (s: readonly number[]): string => `[${s.join(", ")}]`;

// ---------------------------------------------------------------------------------------------
// the shared base

export abstract class SchedulerBase implements Scheduler {
  readonly config: SchedulerConfig;
  readonly alphasCumprod: Float32Array;
  abstract readonly order: number;
  protected readonly noiseSchedule: NoiseSchedule;
  protected grid: TimestepSchedule | null = null;
  private timestepList: readonly number[] = Object.freeze([]);
  protected stepIdx: number | null = null;
  private beginIdx: number | null = null;
  private fallbackGenerator: TorchGenerator | null = null;

  protected constructor(className: SchedulerClassName, config: SchedulerConfigInput = {}) {
    this.config = resolveConfig(className, config);
    this.noiseSchedule = noiseSchedule(this.config);
    this.alphasCumprod = this.noiseSchedule.alphasCumprod;
  }

  get className(): SchedulerClassName {
    return this.config.className;
  }
  get timesteps(): readonly number[] {
    return this.timestepList;
  }
  get timestepDtype(): TimestepDtype {
    return this.grid?.timestepDtype ?? "int64";
  }
  get sigmas(): Float32Array | null {
    return this.grid?.sigmas ?? null;
  }
  get initNoiseSigma(): number {
    return this.grid?.initNoiseSigma ?? 1;
  }
  get numInferenceSteps(): number | null {
    return this.grid?.numInferenceSteps ?? null;
  }
  get stepIndex(): number | null {
    return this.stepIdx;
  }
  get beginIndex(): number | null {
    return this.beginIdx;
  }

  setTimesteps(numInferenceSteps: number, options?: SetTimestepsOptions): void {
    this.grid = buildTimesteps(this.config, numInferenceSteps, this.noiseSchedule, options);
    this.timestepList = Object.freeze(Array.from(this.grid.timesteps));
    this.beginIdx = null;
    this.reset();
  }

  setBeginIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.timestepList.length) {
      throw new RangeError(`${this.className}.setBeginIndex: index must be an integer in [0, ${this.timestepList.length - 1}], got ${index}`);
    }
    this.beginIdx = index;
  }

  reset(): void {
    this.clearState();
    this.stepIdx = null;
  }

  /** Frees the held tensors; the scheduler stays usable (as after reset()). */
  dispose(): void {
    this.reset();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  scaleModelInput(sample: Tensor, _timestep: number): Tensor {
    return newHandle(sample);
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: StepOptions = {}): Tensor {
    const out = this.stepOutput(modelOutput, timestep, sample, opts);
    for (const t of [out.predOriginalSample, out.denoised]) if (t && t !== out.prevSample) t.dispose();
    return out.prevSample;
  }

  stepOutput(modelOutput: Tensor, timestep: number, sample: Tensor, opts: StepOptions = {}): StepOutput {
    this.requireTimesteps("step");
    if (!(modelOutput instanceof Tensor) || !(sample instanceof Tensor)) {
      throw new TypeError(`${this.className}.step: modelOutput and sample must be Tensors`);
    }
    if (!sameShape(modelOutput.shape, sample.shape)) {
      throw new RangeError(
        `${this.className}.step: modelOutput has shape ${shapeStr(modelOutput.shape)} but sample has ${shapeStr(sample.shape)}`,
      );
    }
    if (typeof timestep !== "number" || Number.isNaN(timestep)) {
      throw new TypeError(`${this.className}.step: timestep must be a number, got ${String(timestep)}`);
    }
    return tidy(() => this.stepImpl(modelOutput, timestep, sample, opts));
  }

  abstract addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor;

  /** One step; runs inside a tidy scope (temporaries are freed, the result is handed out). */
  protected abstract stepImpl(modelOutput: Tensor, timestep: number, sample: Tensor, opts: StepOptions): StepOutput;

  /** Dispose the history tensors and clear the per-trajectory state. */
  protected abstract clearState(): void;

  // ---- helpers for the samplers

  protected requireTimesteps(what: string): TimestepSchedule {
    if (!this.grid) throw new Error(`${this.className}.${what}: call setTimesteps(numInferenceSteps) first`);
    return this.grid;
  }

  /** Keep a tensor made in step() beyond its tidy scope (history). */
  protected hold<T extends Tensor>(t: T): T {
    return keep(t);
  }

  /** Keep the caller's tensor for a later step: a new handle on the same storage. */
  protected retain(t: Tensor): Tensor {
    return keep(newHandle(t));
  }

  /** diffusers' index_for_timestep: the position of t in the schedule, the second match if repeated. */
  protected indexForTimestep(t: number): number {
    const hits: number[] = [];
    this.timestepList.forEach((v, i) => {
      if (v === t) hits.push(i);
    });
    if (hits.length === 0) {
      throw new RangeError(`${this.className}: timestep ${t} is not in the schedule [${this.timestepList.join(", ")}]`);
    }
    return hits.length > 1 ? hits[1] : hits[0];
  }

  /** The step index for this call: from the begin index or the timestep on the first call, then the counter. */
  protected currentStepIndex(timestep: number, limit = this.timestepList.length): number {
    if (this.stepIdx === null) this.stepIdx = this.beginIdx ?? this.indexForTimestep(timestep);
    if (this.stepIdx >= limit) {
      throw new RangeError(`${this.className}.step: all ${limit} steps are done; call setTimesteps() or reset() to start again`);
    }
    return this.stepIdx;
  }

  /** alphas_cumprod[t] for an integer timestep (Python indexing: -1 is the last). */
  protected alphaBarAt(t: number): number {
    const ac = this.alphasCumprod;
    if (!Number.isInteger(t) || t < -ac.length || t >= ac.length) {
      throw new RangeError(`${this.className}: timestep must be an integer in [0, ${ac.length - 1}], got ${t}`);
    }
    return ac[t < 0 ? t + ac.length : t];
  }

  /** x0 clipped (clip_sample) or dynamically thresholded (thresholding), as the config asks. */
  protected clipOrThreshold(x0: Tensor): Tensor {
    const c = this.config;
    if (c.thresholding) return dynamicThreshold(x0, c.dynamicThresholdingRatio, c.sampleMaxValue);
    if (c.clipSample) return clamp(x0, -c.clipSampleRange, c.clipSampleRange);
    return x0;
  }

  /** Noise of `like`'s shape, from opts.noise or opts.generator (diffusers' randn_tensor). */
  protected drawNoise(like: Tensor, opts: StepOptions): Tensor {
    if (opts.noise) {
      if (!sameShape(opts.noise.shape, like.shape)) {
        throw new RangeError(`${this.className}.step: opts.noise has shape ${shapeStr(opts.noise.shape)}, expected ${shapeStr(like.shape)}`);
      }
      return opts.noise;
    }
    const shape = like.shape;
    const g = opts.generator ?? (this.fallbackGenerator ??= new TorchGenerator(Math.floor(Math.random() * 2 ** 53)));
    let data: Float32Array;
    if (Array.isArray(g)) {
      const gens = g as readonly NoiseSource[];
      if (shape.length === 0 || gens.length !== shape[0]) {
        throw new RangeError(`${this.className}.step: ${gens.length} generators given for a batch of ${shape[0] ?? 0}`);
      }
      const item = [1, ...shape.slice(1)];
      const per = like.numel / gens.length;
      data = new Float32Array(like.numel);
      gens.forEach((gi, i) => data.set(gi.randn(item).subarray(0, per), i * per));
    } else {
      data = (g as NoiseSource).randn(shape);
    }
    if (data.length !== like.numel) {
      throw new RangeError(`${this.className}.step: the generator returned ${data.length} values for shape ${shapeStr(shape)}`);
    }
    return Tensor.fromArray(data, shape, { device: like.device, dtype: like.dtype });
  }

  // ---- add_noise, the two forms diffusers uses

  /** q(x_t | x_0) = N(sqrt(alpha_bar_t)·x0, (1 - alpha_bar_t)·I) (Ho et al. 2020, eq. 4). */
  protected addNoiseAlphaBar(original: Tensor, noise: Tensor, timestep: number): Tensor {
    this.checkAddNoise(original, noise);
    const a = this.alphaBarAt(timestep);
    return axpby(fsqrt(a), original, fsqrt(f32(1 - a)), noise);
  }

  /** sigma for add_noise in the sigma-based samplers (diffusers' step/begin index rules). */
  protected sigmaForNoising(timestep: number): number {
    const grid = this.requireTimesteps("addNoise");
    const sigmas = grid.sigmas!;
    let i: number;
    if (this.beginIdx === null) i = this.indexForTimestep(timestep);
    else if (this.stepIdx !== null) i = this.stepIdx; // called after the first step (inpainting)
    else i = this.beginIdx; // before the first step (img2img)
    return sigmas[i];
  }

  protected checkAddNoise(original: Tensor, noise: Tensor): void {
    if (!sameShape(original.shape, noise.shape)) {
      throw new RangeError(`${this.className}.addNoise: noise has shape ${shapeStr(noise.shape)} but original has ${shapeStr(original.shape)}`);
    }
  }
}

/** Base for the samplers on a sigma grid (Euler, Euler-a, Heun, LMS): x_in = x / sqrt(sigma^2 + 1). */
export abstract class SigmaSchedulerBase extends SchedulerBase {
  /** Karras et al. 2022, Table 1: c_in = 1/sqrt(sigma^2 + sigma_data^2) with sigma_data = 1. */
  scaleModelInput(sample: Tensor, timestep: number): Tensor {
    const grid = this.requireTimesteps("scaleModelInput");
    if (this.stepIdx === null) this.stepIdx = this.beginIndex ?? this.indexForTimestep(timestep);
    const sigma = grid.sigmas![this.stepIdx];
    if (sigma === undefined) throw new RangeError(`${this.className}.scaleModelInput: all steps are done`);
    return div(sample, fsqrt(f32(f32(sigma * sigma) + 1)));
  }

  /** x_t = x0 + sigma·noise (the variance-exploding forward process). */
  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    this.checkAddNoise(original, noise);
    return axpby(1, original, this.sigmaForNoising(timestep), noise);
  }
}
