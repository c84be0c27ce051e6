/**
 * The noise schedule shared by every sampler: betas, alphas, alphas_cumprod, timestep grids,
 * sigmas and init_noise_sigma, reproducing diffusers 0.27.2 numerically.
 *
 * Precision follows diffusers exactly, because the golden trajectories depend on it:
 *  - betas / alphas / alphas_cumprod are float32 torch tensors. torch.linspace runs the x86 AVX2
 *    kernel, whose `start + step * i` the compiler fused into one FMA; torch.cumprod on CPU
 *    accumulates in double and rounds each output to float32 (acc_type<float> is double).
 *  - train sigmas ((1 - ac) / ac) ** 0.5 are float32 torch ops.
 *  - timestep grids are numpy float64 (np.linspace / np.arange, then np.round = half-to-even);
 *    Euler-type grids are cast to float32, the others to int64.
 *  - np.interp and the Karras ramp run in float64 and the sigmas are cast to float32 at the end.
 *  - _sigma_to_t (Karras) uses np.log of the float32 sigma table, numpy's own SIMD float32 log
 *    (npLogF32), and numpy 1.24's float32 value-based casting for its weights.
 *
 * Config parsing (snake_case scheduler_config.json -> camelCase SchedulerConfig) lives in
 * ./scheduler-config.ts and is re-exported here.
 */
import {
  SchedulerConfig,
  SchedulerClassName,
  schedulerFamily,
  BetaSchedule,
} from "./scheduler-config";

import { fmaf } from "../random/torch-generator";

export * from "./scheduler-config";
/** float32 fused multiply-add with one rounding (same binding as lib/random's). */
export { fmaf };

const fround = Math.fround;

// ---------------------------------------------------------------------------------------------
// numeric emulation helpers (exported for the step() implementations and tests)

/** numpy's np.round / np.rint: round half to even. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/** np.linspace(start, stop, num, endpoint) in float64 (i * step + start; the endpoint set exactly). */
export function npLinspace(start: number, stop: number, num: number, endpoint = true): Float64Array {
  const out = new Float64Array(num);
  const div = endpoint ? num - 1 : num;
  const delta = stop - start;
  if (div > 0) {
    const step = delta / div;
    for (let i = 0; i < num; i++) out[i] = (step === 0 ? (i / div) * delta : i * step) + start;
    if (endpoint && num > 1) out[num - 1] = stop;
  } else {
    for (let i = 0; i < num; i++) out[i] = i * delta + start;
  }
  return out;
}

/** np.arange(start, stop, step) for float64 (numpy fills start + i * ((start + step) - start)). */
export function npArange(start: number, stop: number, step: number): Float64Array {
  if (step === 0 || !Number.isFinite(step)) throw new RangeError(`npArange: step must be finite and non-zero, got ${step}`);
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(len);
  if (len > 0) out[0] = start;
  if (len > 1) {
    out[1] = start + step;
    const delta = out[1] - start;
    for (let i = 2; i < len; i++) out[i] = start + i * delta;
  }
  return out;
}

/** np.interp(x, xp, fp) for increasing xp, float64, numpy's formula (slope * (x - xp[j]) + fp[j]). */
export function npInterp(x: ArrayLike<number>, xp: ArrayLike<number>, fp: ArrayLike<number>): Float64Array {
  const n = xp.length;
  if (n === 0 || fp.length !== n) throw new RangeError("npInterp: xp and fp must be non-empty and of equal length");
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (Number.isNaN(v)) {
      out[i] = v;
      continue;
    }
    if (v >= xp[n - 1]) {
      out[i] = fp[n - 1];
      continue;
    }
    if (v < xp[0]) {
      out[i] = fp[0];
      continue;
    }
    let lo = 0;
    let hi = n - 1; // xp[lo] <= v < xp[hi]
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (xp[mid] <= v) lo = mid;
      else hi = mid;
    }
    const j = lo;
    if (xp[j] === v) {
      out[i] = fp[j];
      continue;
    }
    const slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let r = slope * (v - xp[j]) + fp[j];
    if (Number.isNaN(r)) {
      r = slope * (v - xp[j + 1]) + fp[j + 1];
      if (Number.isNaN(r) && fp[j] === fp[j + 1]) r = fp[j];
    }
    out[i] = r;
  }
  return out;
}

/**
 * torch.linspace(start, end, steps, dtype=float32) as torch 1.13's AVX2 CPU kernel computes it:
 * step = (end - start) / (steps - 1) in float32; index i < steps/2 gives fma(step, i, start), the
 * upper half fma(-step, steps - 1 - i, end); blocks of 16 run as two 8-lane vectors whose lanes are
 * fma(k, step, lane0) from the vector's first value; the tail is scalar.
 */
export function torchLinspaceF32(startIn: number, endIn: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 0) return out;
  const start = fround(startIn);
  const end = fround(endIn);
  if (steps === 1) {
    out[0] = start;
    return out;
  }
  const step = fround(fround(end - start) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const at = (i: number): number => (i < halfway ? fmaf(step, i, start) : fmaf(-step, steps - i - 1, end));
  const VEC = 8;
  let i = 0;
  for (; i <= steps - 2 * VEC; i += 2 * VEC) {
    for (const base of [i, i + VEC]) {
      const b0 = at(base);
      out[base] = b0;
      for (let k = 1; k < VEC; k++) out[base + k] = fmaf(k, step, b0);
    }
  }
  for (; i < steps; i++) out[i] = at(i);
  return out;
}

/** torch.cumprod on a float32 CPU tensor: double accumulator, each output rounded to float32. */
export function torchCumprodF32(x: ArrayLike<number>): Float32Array {
  const out = new Float32Array(x.length);
  let acc = 1;
  for (let i = 0; i < x.length; i++) {
    acc *= x[i];
    out[i] = acc;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// betas, alphas, alphas_cumprod

export interface BetaOptions {
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: BetaSchedule;
  trainedBetas?: readonly number[] | null;
}

/** The float32 betas diffusers builds in a scheduler's __init__ (before any zero-SNR rescale). */
export function makeBetas(o: BetaOptions): Float32Array {
  const n = o.numTrainTimesteps;
  if (o.trainedBetas) return Float32Array.from(o.trainedBetas);
  switch (o.betaSchedule) {
    case "linear":
      return torchLinspaceF32(o.betaStart, o.betaEnd, n);
    case "scaled_linear": {
      // latent-diffusion schedule: linspace of sqrt(beta), squared (float32 x * x)
      const r = torchLinspaceF32(Math.sqrt(o.betaStart), Math.sqrt(o.betaEnd), n);
      return r.map((v) => fround(v * v));
    }
    case "squaredcos_cap_v2":
      return cosineBetas(n);
    default:
      throw new RangeError(`makeBetas: unknown beta_schedule ${String(o.betaSchedule)}`);
  }
}

/**
 * Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2), s = 0.008;
 * beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), maxBeta). Python float64, then float32.
 */
export function cosineBetas(numTrainTimesteps: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number): number => {
    const c = Math.cos((((t + 0.008) / 1.008) * Math.PI) / 2);
    return c * c;
  };
  const out = new Float32Array(numTrainTimesteps);
  for (let i = 0; i < numTrainTimesteps; i++) {
    const t1 = i / numTrainTimesteps;
    const t2 = (i + 1) / numTrainTimesteps;
    out[i] = Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
  }
  return out;
}

/**
 * Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1:
 * shift and scale sqrt(alpha_bar) so the last timestep has zero SNR while the first keeps its value.
 * float32 throughout, as diffusers' torch code.
 */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const n = betas.length;
  const ac = torchCumprodF32(betas.map((b) => fround(1 - b)));
  const abs = ac.map((v) => fround(Math.sqrt(v)));
  const a0 = abs[0];
  const aT = abs[n - 1];
  const scale = fround(a0 / fround(a0 - aT));
  const bar = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const s = fround(fround(abs[i] - aT) * scale);
    bar[i] = fround(s * s);
  }
  const out = new Float32Array(n);
  out[0] = fround(1 - bar[0]);
  for (let i = 1; i < n; i++) out[i] = fround(1 - fround(bar[i] / bar[i - 1]));
  return out;
}

export interface NoiseSchedule {
  readonly betas: Float32Array;
  readonly alphas: Float32Array;
  /** float32; for zero-SNR Euler/Euler-a/DPM the last entry is 2^-24 (diffusers' guard against sigma = inf) */
  readonly alphasCumprod: Float32Array;
  /** DDIM/PNDM/LCM "alpha_prod_t_prev" at the end: 1 with set_alpha_to_one, else alphasCumprod[0] */
  readonly finalAlphaCumprod: number;
}

const ZERO_SNR_EPS_CLASSES: ReadonlySet<SchedulerClassName> = new Set<SchedulerClassName>([
  "EulerDiscreteScheduler",
  "EulerAncestralDiscreteScheduler",
  "DPMSolverMultistepScheduler",
]);

/** What a scheduler's __init__ computes from its config. */
export function noiseSchedule(config: SchedulerConfig): NoiseSchedule {
  let betas = makeBetas(config);
  if (config.rescaleBetasZeroSnr) betas = rescaleZeroTerminalSnr(betas);
  const alphas = betas.map((b) => fround(1 - b));
  const alphasCumprod = torchCumprodF32(alphas);
  if (config.rescaleBetasZeroSnr && ZERO_SNR_EPS_CLASSES.has(config.className)) {
    alphasCumprod[alphasCumprod.length - 1] = 2 ** -24;
  }
  const finalAlphaCumprod = config.setAlphaToOne ? 1 : alphasCumprod[0];
  return { betas, alphas, alphasCumprod, finalAlphaCumprod };
}

/** sigma_t = ((1 - alpha_bar_t) / alpha_bar_t) ** 0.5 over all training timesteps, float32 torch ops. */
export function trainSigmas(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((a) => fround(Math.sqrt(fround(fround(1 - a) / a))));
}

// numpy's SIMD float32 log (loops_exponent_log, AVX2-FMA3 / AVX512F): mantissa m in (sqrt(1/2), sqrt(2)],
// log(m) = P(m - 1) / Q(m - 1) with degree-5 minimax polynomials evaluated by FMA, plus e * ln 2.
// Up to ~4 ulp from the true log, and _sigma_to_t amplifies one ulp to ~1e-5 in t, so it is reproduced.
const NP_LOG_P = [0, 9.999999999999998702752e-1, 2.112677543073053063722, 1.480000633576506585156, 3.808837741388407920751e-1, 2.589979117907922693523e-2].map(fround);
const NP_LOG_Q = [1, 2.612677543073109236779, 2.453006071784736363091, 9.864942958519418960339e-1, 1.546476374983906719538e-1, 5.875095403124574342950e-3].map(fround);
const NP_LOGE2 = fround(Math.LN2);
const NP_SQRT1_2 = fround(Math.SQRT1_2);
const logBitsF32 = new Float32Array(1);
const logBitsI32 = new Int32Array(logBitsF32.buffer);

/** np.log on a float32 value, as numpy's vectorised loop computes it (positive finite normal inputs). */
export function npLogF32(x: number): number {
  if (!(x >= 1.1754943508222875e-38) || x === Infinity) return fround(Math.log(x)); // 0, negatives, NaN, inf, denormals
  logBitsF32[0] = x;
  const bits = logBitsI32[0];
  let e = (bits >>> 23) - 126;
  logBitsI32[0] = (bits & 0x7fffff) | 0x3f000000; // m in [0.5, 1)
  let m = logBitsF32[0];
  if (m <= NP_SQRT1_2) {
    m = fround(m + m);
    e -= 1;
  }
  const y = fround(m - 1);
  let num = fmaf(NP_LOG_P[5], y, NP_LOG_P[4]);
  let den = fmaf(NP_LOG_Q[5], y, NP_LOG_Q[4]);
  for (let k = 3; k >= 0; k--) {
    num = fmaf(num, y, NP_LOG_P[k]);
    den = fmaf(den, y, NP_LOG_Q[k]);
  }
  return fmaf(e, NP_LOGE2, fround(num / den));
}

/** np.log of a float32 array (float32 result, numpy's SIMD algorithm). */
export function logF32(x: Float32Array): Float32Array {
  return x.map(npLogF32);
}

/**
 * Karras et al. 2022 eq. 5 (rho = 7): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
 * float64. sigmaMin/sigmaMax default to the last/first entry of inSigmas (diffusers' convention).
 */
export function karrasSigmas(
  inSigmas: ArrayLike<number>,
  numInferenceSteps: number,
  sigmaMin?: number | null,
  sigmaMax?: number | null,
  rho = 7.0,
): Float64Array {
  const lo = sigmaMin ?? inSigmas[inSigmas.length - 1];
  const hi = sigmaMax ?? inSigmas[0];
  const ramp = npLinspace(0, 1, numInferenceSteps);
  const minInv = Math.pow(lo, 1 / rho);
  const maxInv = Math.pow(hi, 1 / rho);
  return ramp.map((r) => Math.pow(maxInv + r * (minInv - maxInv), rho));
}

/**
 * diffusers' _sigma_to_t: the fractional training timestep whose log-sigma matches, by linear
 * interpolation between neighbours of the float32 logSigmas table. numpy 1.24 value-based casting
 * makes the comparison and the weight float32 (the float64 log sigma is cast down), and the final
 * (1 - w) * low + w * high float64.
 */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const ls = fround(Math.log(Math.max(sigma, 1e-10)));
  const n = logSigmas.length;
  let low = 0;
  for (let i = 0; i < n; i++) if (fround(ls - logSigmas[i]) >= 0) low = i; // last index with dist >= 0
  if (low > n - 2) low = n - 2;
  const high = low + 1;
  const lo = logSigmas[low];
  const hi = logSigmas[high];
  let w = fround(fround(lo - ls) / fround(lo - hi));
  w = Math.min(Math.max(w, 0), 1);
  return fround(1 - w) * low + w * high;
}

// ---------------------------------------------------------------------------------------------
// timestep grids and sigmas: what set_timesteps(n) leaves in the scheduler

export type TimestepDtype = "int64" | "float32" | "float64";

export interface TimestepSchedule {
  /** scheduler.timesteps in order (Heun repeats all but the first, PNDM PLMS repeats one). */
  readonly timesteps: Float64Array;
  /** the dtype diffusers keeps them in; integer ones are handed to the model as int64 */
  readonly timestepDtype: TimestepDtype;
  /** scheduler.sigmas (float32) for the sigma-based classes, else null */
  readonly sigmas: Float32Array | null;
  readonly initNoiseSigma: number;
  readonly numInferenceSteps: number;
  /** PNDM only: the Runge-Kutta (PRK) part that precedes the PLMS part (empty with skip_prk_steps) */
  readonly prkTimesteps?: Float64Array;
  readonly plmsTimesteps?: Float64Array;
}

export interface SetTimestepsOptions {
  /** LCM: overrides config.originalInferenceSteps */
  originalInferenceSteps?: number;
  /** LCM: img2img strength (default 1) */
  strength?: number;
}

/** scheduler.set_timesteps(numInferenceSteps) for the class named in config. */
export function setTimesteps(
  config: SchedulerConfig,
  numInferenceSteps: number,
  schedule: NoiseSchedule = noiseSchedule(config),
  options: SetTimestepsOptions = {},
): TimestepSchedule {
  const N = config.numTrainTimesteps;
  if (!Number.isInteger(numInferenceSteps) || numInferenceSteps < 1 || numInferenceSteps > N) {
    throw new RangeError(
      `${config.className}.setTimesteps: numInferenceSteps must be an integer in [1, ${N}], got ${numInferenceSteps}`,
    );
  }
  switch (schedulerFamily(config.className)) {
    case "ddpm":
      return intGrid(ddpmTimesteps(config, numInferenceSteps), numInferenceSteps);
    case "pndm":
      return pndmTimesteps(config, numInferenceSteps);
    case "euler":
      return eulerTimesteps(config, numInferenceSteps, schedule);
    case "dpm":
      return dpmTimesteps(config, numInferenceSteps, schedule);
    case "lcm":
      return intGrid(lcmTimesteps(config, numInferenceSteps, options), numInferenceSteps);
  }
}

function intGrid(t: Float64Array, n: number): TimestepSchedule {
  return { timesteps: t, timestepDtype: "int64", sigmas: null, initNoiseSigma: 1, numInferenceSteps: n };
}

function reversed(a: Float64Array): Float64Array {
  return a.slice().reverse();
}

/** DDPM and DDIM: integer grids, descending. */
function ddpmTimesteps(c: SchedulerConfig, n: number): Float64Array {
  const N = c.numTrainTimesteps;
  switch (c.timestepSpacing) {
    case "linspace":
      return reversed(npLinspace(0, N - 1, n).map(roundHalfEven));
    case "leading": {
      const ratio = Math.floor(N / n);
      const t = new Float64Array(n);
      for (let i = 0; i < n; i++) t[i] = (n - 1 - i) * ratio + c.stepsOffset;
      return t;
    }
    case "trailing":
      return npArange(N, 0, -N / n).map((v) => roundHalfEven(v) - 1);
  }
}

/** PNDM: PRK part (unless skip_prk_steps) followed by the PLMS part. */
function pndmTimesteps(c: SchedulerConfig, n: number): TimestepSchedule {
  const N = c.numTrainTimesteps;
  let base: Float64Array; // ascending, as diffusers' _timesteps
  switch (c.timestepSpacing) {
    case "linspace":
      base = npLinspace(0, N - 1, n).map(roundHalfEven);
      break;
    case "leading": {
      const ratio = Math.floor(N / n);
      base = new Float64Array(n);
      for (let i = 0; i < n; i++) base[i] = i * ratio + c.stepsOffset;
      break;
    }
    case "trailing":
      base = reversed(npArange(N, 0, -N / n).map(roundHalfEven)).map((v) => v - 1);
      break;
  }
  let prk: Float64Array;
  let plms: Float64Array;
  const L = base.length;
  if (c.skipPrkSteps) {
    // [t_0 .. t_{L-2}, t_{L-2}, t_{L-1}] reversed: the second-highest timestep is used twice
    prk = new Float64Array(0);
    const cat = [...base.subarray(0, Math.max(L - 1, 0)), ...(L >= 2 ? [base[L - 2]] : []), base[L - 1]];
    plms = Float64Array.from(cat.reverse());
  } else {
    const pndmOrder = 4;
    const half = Math.floor(Math.floor(N / n) / 2);
    const last = Array.from(base.subarray(Math.max(L - pndmOrder, 0)));
    const rep: number[] = [];
    last.forEach((t) => rep.push(t, t));
    const tiled = rep.map((t, i) => t + (i % 2 === 1 ? half : 0));
    const dbl: number[] = [];
    tiled.slice(0, -1).forEach((t) => dbl.push(t, t));
    prk = Float64Array.from(dbl.slice(1, -1).reverse());
    plms = reversed(base.subarray(0, Math.max(L - 3, 0)));
  }
  const timesteps = new Float64Array(prk.length + plms.length);
  timesteps.set(prk, 0);
  timesteps.set(plms, prk.length);
  return {
    timesteps,
    timestepDtype: "int64",
    sigmas: null,
    initNoiseSigma: 1,
    numInferenceSteps: n,
    prkTimesteps: prk,
    plmsTimesteps: plms,
  };
}

const arangeN = (n: number): Float64Array => Float64Array.from({ length: n }, (_, i) => i);

/** Euler, Euler ancestral, LMS, Heun: float grids and sigmas interpolated at them. */
function eulerTimesteps(c: SchedulerConfig, n: number, s: NoiseSchedule): TimestepSchedule {
  const N = c.numTrainTimesteps;
  let t: Float64Array;
  switch (c.timestepSpacing) {
    case "linspace":
      t = reversed(npLinspace(0, N - 1, n).map(fround));
      break;
    case "leading": {
      const ratio = Math.floor(N / n);
      t = new Float64Array(n);
      for (let i = 0; i < n; i++) t[i] = (n - 1 - i) * ratio + c.stepsOffset;
      break;
    }
    case "trailing":
      t = npArange(N, 0, -N / n).map((v) => roundHalfEven(v) - 1);
      break;
  }
  const train = trainSigmas(s.alphasCumprod);
  const logSigmas = logF32(train);
  let sig: Float64Array;
  if (c.interpolationType === "log_linear") {
    // torch.linspace(log(sigma_max), log(sigma_min), n + 1).exp(), float32
    const lin = torchLinspaceF32(logSigmas[train.length - 1], logSigmas[0], n + 1);
    sig = Float64Array.from(lin, (v) => fround(Math.exp(v)));
  } else {
    sig = npInterp(t, arangeN(train.length), train);
  }
  let dtype: TimestepDtype = "float32";
  if (c.useKarrasSigmas) {
    const karras = karrasSigmas(sig, n, c.className === "EulerDiscreteScheduler" ? c.sigmaMin : null,
      c.className === "EulerDiscreteScheduler" ? c.sigmaMax : null);
    sig = karras;
    t = karras.map((v) => sigmaToT(v, logSigmas));
    // Euler casts its timesteps to float32; LMS and Heun keep numpy's float64
    dtype = c.className === "EulerDiscreteScheduler" ? "float32" : "float64";
  }
  if (dtype === "float32") t = t.map(fround);
  let sigmas = new Float32Array(sig.length + 1);
  sigmas.set(sig);
  if (c.className === "EulerDiscreteScheduler" && c.timestepType === "continuous" && c.predictionType === "v_prediction") {
    t = Float64Array.from(sigmas.subarray(0, sigmas.length - 1), (v) => fround(0.25 * fround(Math.log(v))));
  }
  if (c.className === "HeunDiscreteScheduler") {
    // first-order step at sigma_0, then each later sigma twice (predictor and corrector)
    const sg = [sigmas[0]];
    for (let i = 1; i < sigmas.length - 1; i++) sg.push(sigmas[i], sigmas[i]);
    sg.push(sigmas[sigmas.length - 1]);
    sigmas = Float32Array.from(sg);
    const tt = [t[0]];
    for (let i = 1; i < t.length; i++) tt.push(t[i], t[i]);
    t = Float64Array.from(tt);
  }
  let maxSigma = 0;
  for (const v of sigmas) if (v > maxSigma) maxSigma = v;
  const initNoiseSigma =
    c.timestepSpacing === "linspace" || c.timestepSpacing === "trailing"
      ? maxSigma
      : fround(Math.sqrt(fround(fround(maxSigma * maxSigma) + 1)));
  return { timesteps: t, timestepDtype: dtype, sigmas, initNoiseSigma, numInferenceSteps: n };
}

/** DPM-Solver multistep and UniPC: integer grids of n + 1 points minus the last, and sigmas. */
function dpmTimesteps(c: SchedulerConfig, n: number, s: NoiseSchedule): TimestepSchedule {
  const N = c.numTrainTimesteps;
  const train = trainSigmas(s.alphasCumprod);
  const logSigmas = logF32(train);
  // lambda_min_clipped: drop the training timesteps whose lambda = log(alpha_t) - log(sigma_t) is below it
  const lastTimestep = N - clippedIndex(s.alphasCumprod, c.lambdaMinClipped);
  let t: Float64Array;
  switch (c.timestepSpacing) {
    case "linspace":
      t = reversed(npLinspace(0, lastTimestep - 1, n + 1).map(roundHalfEven)).subarray(0, n).slice();
      break;
    case "leading": {
      const ratio = Math.floor(lastTimestep / (n + 1));
      t = new Float64Array(n);
      for (let i = 0; i < n; i++) t[i] = (n - i) * ratio + c.stepsOffset;
      break;
    }
    case "trailing":
      t = npArange(lastTimestep, 0, -N / n).map((v) => roundHalfEven(v) - 1);
      break;
  }
  let sig: Float64Array;
  const isUniPC = c.className === "UniPCMultistepScheduler";
  let lastSigma: number;
  const sigmaAtZero = train[0];
  if (c.useKarrasSigmas) {
    sig = karrasSigmas(reversed(Float64Array.from(train)), n);
    t = sig.map((v) => roundHalfEven(sigmaToT(v, logSigmas)));
    lastSigma = isUniPC ? sig[sig.length - 1] : c.finalSigmasType === "sigma_min" ? sigmaAtZero : 0;
  } else if (!isUniPC && c.useLuLambdas) {
    // diffusers flips log_sigmas and spaces them uniformly (rho = 1), then maps back with exp
    const lambdas = reversed(Float64Array.from(logSigmas));
    const lo = lambdas[lambdas.length - 1];
    const hi = lambdas[0];
    const ramp = npLinspace(0, 1, n);
    sig = ramp.map((r) => Math.exp(hi + r * (lo - hi)));
    t = sig.map((v) => roundHalfEven(sigmaToT(v, logSigmas)));
    lastSigma = c.finalSigmasType === "sigma_min" ? sigmaAtZero : 0;
  } else {
    sig = npInterp(t, arangeN(train.length), train);
    lastSigma = isUniPC || c.finalSigmasType === "sigma_min" ? sigmaAtZero : 0;
  }
  const sigmas = new Float32Array(sig.length + 1);
  sigmas.set(sig);
  sigmas[sig.length] = lastSigma;
  return { timesteps: t, timestepDtype: "int64", sigmas, initNoiseSigma: 1, numInferenceSteps: n };
}

/** torch.searchsorted(flip(lambda_t), lambda_min_clipped) with lambda_t = log(alpha_t) - log(sigma_t). */
function clippedIndex(alphasCumprod: Float32Array, lambdaMinClipped: number): number {
  if (lambdaMinClipped === -Infinity) return 0;
  const n = alphasCumprod.length;
  const lambdas = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const a = fround(Math.sqrt(alphasCumprod[i]));
    const sgm = fround(Math.sqrt(fround(1 - alphasCumprod[i])));
    lambdas[n - 1 - i] = fround(fround(Math.log(a)) - fround(Math.log(sgm)));
  }
  let idx = 0; // left insertion point in the ascending flipped array
  while (idx < n && lambdas[idx] < lambdaMinClipped) idx++;
  return idx;
}

/** LCM: every k-th step of an original_inference_steps-long DDIM grid, skipped evenly. */
function lcmTimesteps(c: SchedulerConfig, n: number, o: SetTimestepsOptions): Float64Array {
  const N = c.numTrainTimesteps;
  const orig = o.originalInferenceSteps ?? c.originalInferenceSteps;
  const strength = o.strength ?? 1;
  if (orig > N) throw new RangeError(`LCMScheduler.setTimesteps: original_inference_steps ${orig} exceeds ${N}`);
  if (n > orig) {
    throw new RangeError(`LCMScheduler.setTimesteps: numInferenceSteps ${n} exceeds original_inference_steps ${orig}`);
  }
  const k = Math.floor(N / orig);
  const count = Math.trunc(orig * strength);
  if (Math.floor(count / n) < 1) {
    throw new RangeError(
      `LCMScheduler.setTimesteps: original_inference_steps x strength = ${count} is smaller than numInferenceSteps ${n}`,
    );
  }
  const origin = Float64Array.from({ length: count }, (_, i) => (count - i) * k - 1); // descending
  const idx = npLinspace(0, count, n, false).map(Math.floor);
  return idx.map((i) => origin[i]);
}
