/**
 * DPM-Solver++ (multistep, data prediction) and its SDE variant:
 * Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
 * Probabilistic Models" (arXiv:2211.01095), and Gonzalez et al. 2023 / Lu et al.'s SDE-DPM-Solver++
 * for the stochastic form.
 *
 * With alpha_t, sigma_t of the grid's sigma (scheduler.ts `alphaSigma`), lambda = log(alpha/sigma),
 * h = lambda_t - lambda_s and the data prediction x0 = D (the model output converted, §3):
 *   1st order (= DDIM, eq. 8):      x_t = (sigma_t/sigma_s)·x_s - alpha_t·(e^-h - 1)·D_s
 *   2M (Algorithm 2, "midpoint"):   D1 = (D_s - D_{s-1}) / r0, r0 = h_{s-1}/h,
 *                                   x_t = (sigma_t/sigma_s)·x_s - alpha_t(e^-h - 1)·D_s - ½·alpha_t(e^-h - 1)·D1
 *   "heun" variant:                 ... + alpha_t·((e^-h - 1)/h + 1)·D1
 *   SDE 1st order:  x_t = (sigma_t/sigma_s)e^-h·x_s + alpha_t(1 - e^-2h)·D_s + sigma_t·sqrt(1 - e^-2h)·z
 *   SDE 2M:         ... + ½·alpha_t(1 - e^-2h)·D1   ("heun": alpha_t((1 - e^-2h)/(-2h) + 1)·D1)
 * The last step falls back to first order (lower_order_final for < 15 steps, euler_at_final, or a
 * final sigma of 0, where h = +inf and the step returns D itself).
 * "dpm++2m-karras" is this with Karras sigmas (set in the schedule).
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import {
  SchedulerBase,
  SchedulerConfigInput,
  StepOptions,
  StepOutput,
  alphaSigma,
  copyOf,
  f32,
  fexp,
  fsqrt,
  linearCombination,
} from "./scheduler";

export const DPM_ALGORITHM_TYPES = ["dpmsolver++", "sde-dpmsolver++"] as const;
export const DPM_SOLVER_ORDERS = [1, 2] as const;

/** The data prediction x0 at noise level sigma (DPM-Solver++'s convert_model_output), shared with UniPC. */
export function dataPrediction(type: "epsilon" | "v_prediction" | "sample", x: Tensor, m: Tensor, sigma: number): Tensor {
  const { alpha, sigma: s } = alphaSigma(sigma);
  switch (type) {
    case "epsilon": // x = alpha·x0 + sigma·eps
      return axpby(1 / alpha, x, -s / alpha, m);
    case "v_prediction": // v = alpha·eps - sigma·x0
      return axpby(alpha, x, -s, m);
    case "sample":
      return copyOf(m);
  }
}

export class DPMSolverMultistepScheduler extends SchedulerBase {
  readonly order = 1;
  /** D_{s-1}, D_s (held), oldest first; null until filled */
  private modelOutputs: (Tensor | null)[];
  private lowerOrderNums = 0;

  constructor(config: SchedulerConfigInput = {}) {
    super("DPMSolverMultistepScheduler", config);
    const c = this.config;
    if (!(DPM_ALGORITHM_TYPES as readonly string[]).includes(c.algorithmType)) {
      throw new RangeError(
        `DPMSolverMultistepScheduler: algorithm_type must be one of ${DPM_ALGORITHM_TYPES.map((v) => `"${v}"`).join(", ")}, got "${c.algorithmType}"`,
      );
    }
    if (!(DPM_SOLVER_ORDERS as readonly number[]).includes(c.solverOrder)) {
      throw new RangeError(`DPMSolverMultistepScheduler: solver_order must be one of ${DPM_SOLVER_ORDERS.join(", ")}, got ${c.solverOrder}`);
    }
    if (c.varianceType !== null) {
      throw new RangeError(`DPMSolverMultistepScheduler: variance_type must be null (learned variances are not supported), got "${c.varianceType}"`);
    }
    this.modelOutputs = new Array<Tensor | null>(c.solverOrder).fill(null);
  }

  protected clearState(): void {
    for (const t of this.modelOutputs) t?.dispose();
    this.modelOutputs = new Array<Tensor | null>(this.config.solverOrder).fill(null);
    this.lowerOrderNums = 0;
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const c = this.config;
    const sigmas = this.requireTimesteps("step").sigmas!;
    const L = this.timesteps.length;
    const i = this.currentStepIndex(t);
    const lowerFinal = i === L - 1 && (c.eulerAtFinal || (c.lowerOrderFinal && L < 15) || c.finalSigmasType === "zero");

    let D = dataPrediction(c.predictionType, x, m, sigmas[i]);
    D = this.clipOrThreshold(D);
    const outs = this.modelOutputs;
    outs[0]?.dispose();
    for (let k = 0; k + 1 < outs.length; k++) outs[k] = outs[k + 1];
    outs[outs.length - 1] = this.hold(D);

    const sde = c.algorithmType === "sde-dpmsolver++";
    const z = sde ? this.drawNoise(m, opts) : null;

    const T = alphaSigma(sigmas[i + 1]);
    const S = alphaSigma(sigmas[i]);
    const h = f32(T.lambda - S.lambda);
    const firstOrder = c.solverOrder === 1 || this.lowerOrderNums < 1 || lowerFinal;

    // the D1 term as a multiple k of (D_s - D_{s-1}) / r0
    let k = 0;
    let r0 = 1;
    if (!firstOrder) {
      const S1 = alphaSigma(sigmas[i - 1]);
      r0 = f32(f32(S.lambda - S1.lambda) / h);
    }
    let prev: Tensor;
    if (!sde) {
      const em1 = f32(fexp(-h) - 1);
      const cx = f32(T.sigma / S.sigma);
      const cD = f32(T.alpha * em1);
      if (!firstOrder) k = c.solverType === "heun" ? f32(T.alpha * f32(f32(em1 / h) + 1)) : -f32(0.5 * cD);
      prev = this.combine(cx, x, -cD, k, r0, null, 0);
    } else {
      const e2 = fexp(f32(-2 * h));
      const om = f32(1 - e2);
      const cx = f32(f32(T.sigma / S.sigma) * fexp(-h));
      const cD = f32(T.alpha * om);
      const cz = f32(T.sigma * fsqrt(om));
      if (!firstOrder) k = c.solverType === "heun" ? f32(T.alpha * f32(f32(om / f32(-2 * h)) + 1)) : f32(0.5 * cD);
      prev = this.combine(cx, x, cD, k, r0, z, cz);
    }
    if (this.lowerOrderNums < c.solverOrder) this.lowerOrderNums++;
    this.stepIdx = i + 1;
    return { prevSample: prev };
  }

  /** cx·x + cD·D_s + k·(D_s - D_{s-1})/r0 + cz·z, as fused passes. */
  private combine(cx: number, x: Tensor, cD: number, k: number, r0: number, z: Tensor | null, cz: number): Tensor {
    const outs = this.modelOutputs;
    const D0 = outs[outs.length - 1]!;
    const terms: [number, Tensor][] = [[cx, x]];
    if (k !== 0) {
      const kr = k * f32(1 / r0);
      terms.push([cD + kr, D0], [-kr, outs[outs.length - 2]!]);
    } else {
      terms.push([cD, D0]);
    }
    if (z) terms.push([cz, z]);
    // at sigma_next = 0, cx = 0 and the step returns D_s (plus 0·z)
    return linearCombination(terms);
  }

  /** x_t = alpha_t·x0 + sigma_t·noise at the timestep's sigma. */
  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    this.checkAddNoise(original, noise);
    const { alpha, sigma } = alphaSigma(this.sigmaForNoising(timestep));
    return axpby(alpha, original, sigma, noise);
  }
}
