/**
 * UniPC: Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
 * Sampling of Diffusion Models" (arXiv:2302.04867), data-prediction form (predict_x0), B(h) of
 * type bh1 (B(h) = h) or bh2 (B(h) = e^h - 1), with -h for data prediction (Appendix, "UniPC with
 * x0-prediction").
 *
 * With alpha, sigma, lambda of the sigma grid (as DPM-Solver), h = lambda_t - lambda_s0, hh = -h,
 * the data predictions m_0 (newest) .. m_{p-1}, r_k = (lambda_{s_k} - lambda_s0)/h and
 * D_k = (m_k - m_0)/r_k:
 *   UniP-p  (Algorithm 2, predictor):  x_t = (sigma_t/sigma_s0)·x - alpha_t·(e^hh - 1)·m_0
 *                                           - alpha_t·B(h)·sum_k rho^p_k·D_k
 *   UniC-p  (Algorithm 1, corrector): the same from the previous point with the fresh model output
 *            m_t added as the last D term (r = 1): ... - alpha_t·B(h)·(sum_k rho^c_k·D_k + rho^c_p·(m_t - m_0))
 * where rho solves R·rho = g, R_{ij} = r_j^i, g_i = (h·phi_{i+1}(hh))·i!/B(h) (eq. 8 and its phi
 * recursion, phi_{k+1}(h) = (phi_k(h) - 1/k!)/h). For p = 2 the predictor uses rho = 1/2, and
 * for p = 1 the corrector uses rho = 1/2, as the reference implementation does.
 * Each step corrects the previous result with the new model output (UniC), then predicts (UniP).
 */
import { Tensor } from "../tensor";
import {
  SchedulerBase,
  SchedulerConfigInput,
  StepOptions,
  StepOutput,
  alphaSigma,
  f32,
  fexpm1,
  linearCombination,
  solveSmall,
} from "./scheduler";
import { dataPrediction } from "./dpm-solver";

export const UNIPC_SOLVER_ORDERS = [1, 2, 3] as const;

interface BhCoefficients {
  /** h·phi_1(hh) = e^hh - 1 */
  hPhi1: number;
  /** B(h) */
  Bh: number;
  /** the right-hand side g_1..g_p */
  g: number[];
}

/** The float32 scalars of eq. 8 in the order diffusers builds them. */
function bhCoefficients(h: number, order: number, bh1: boolean): BhCoefficients {
  const hh = f32(-h);
  const hPhi1 = fexpm1(hh);
  let hPhiK = f32(f32(hPhi1 / hh) - 1);
  let factorial = 1;
  const Bh = bh1 ? hh : fexpm1(hh);
  const g: number[] = [];
  for (let i = 1; i <= order; i++) {
    g.push(f32(f32(hPhiK * factorial) / Bh));
    factorial *= i + 1;
    hPhiK = f32(f32(hPhiK / hh) - f32(1 / factorial));
  }
  return { hPhi1, Bh, g };
}

export class UniPCMultistepScheduler extends SchedulerBase {
  readonly order = 1;
  /** converted model outputs (held), oldest first */
  private modelOutputs: (Tensor | null)[];
  private lastSample: Tensor | null = null;
  private lowerOrderNums = 0;
  private thisOrder = 0;

  constructor(config: SchedulerConfigInput = {}) {
    super("UniPCMultistepScheduler", config);
    const c = this.config;
    if (!(UNIPC_SOLVER_ORDERS as readonly number[]).includes(c.solverOrder)) {
      throw new RangeError(`UniPCMultistepScheduler: solver_order must be one of ${UNIPC_SOLVER_ORDERS.join(", ")}, got ${c.solverOrder}`);
    }
    if (!c.predictX0) {
      throw new RangeError("UniPCMultistepScheduler: predict_x0 must be true (the noise-prediction form is not supported), got false");
    }
    this.modelOutputs = new Array<Tensor | null>(c.solverOrder).fill(null);
  }

  protected clearState(): void {
    for (const t of this.modelOutputs) t?.dispose();
    this.modelOutputs = new Array<Tensor | null>(this.config.solverOrder).fill(null);
    this.lastSample?.dispose();
    this.lastSample = null;
    this.lowerOrderNums = 0;
    this.thisOrder = 0;
  }

  private lambdaAt(i: number): number {
    return alphaSigma(this.sigmas![i]).lambda;
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, _opts: StepOptions): StepOutput {
    const c = this.config;
    const L = this.timesteps.length;
    const i = this.currentStepIndex(t);
    const useCorrector = i > 0 && !c.disableCorrector.includes(i - 1) && this.lastSample !== null;

    let mc = dataPrediction(c.predictionType, x, m, this.sigmas![i]); // at the uncorrected x
    mc = this.clipOrThreshold(mc);
    let sample = x;
    if (useCorrector) sample = this.corrector(mc, i, this.thisOrder);

    const outs = this.modelOutputs;
    outs[0]?.dispose();
    for (let k = 0; k + 1 < outs.length; k++) outs[k] = outs[k + 1];
    outs[outs.length - 1] = this.hold(mc);

    let order = c.lowerOrderFinal ? Math.min(c.solverOrder, L - i) : c.solverOrder;
    order = Math.min(order, this.lowerOrderNums + 1); // warm-up
    this.thisOrder = order;

    this.lastSample?.dispose();
    this.lastSample = sample === x ? this.retain(x) : this.hold(sample);
    const prev = this.predictor(sample, i, order);
    if (this.lowerOrderNums < c.solverOrder) this.lowerOrderNums++;
    this.stepIdx = i + 1;
    return { prevSample: prev };
  }

  /** UniP-p from sigmas[i] to sigmas[i+1] (m_0 = the newest stored output). */
  private predictor(x: Tensor, i: number, order: number): Tensor {
    const outs = this.modelOutputs;
    const T = alphaSigma(this.sigmas![i + 1]);
    const S = alphaSigma(this.sigmas![i]);
    const h = f32(T.lambda - S.lambda);
    const m0 = outs[outs.length - 1]!;
    const rks: number[] = [];
    const older: Tensor[] = [];
    for (let k = 1; k < order; k++) {
      rks.push(f32(f32(this.lambdaAt(i - k) - S.lambda) / h));
      older.push(outs[outs.length - 1 - k]!);
    }
    const { hPhi1, Bh, g } = bhCoefficients(h, order, this.config.solverType === "bh1");
    let rhos: number[] = [];
    if (order === 2) rhos = [0.5];
    else if (order > 2) {
      const r = [...rks, 1];
      const R = Array.from({ length: order - 1 }, (_, p) => r.slice(0, order - 1).map((v) => Math.pow(v, p)));
      rhos = solveSmall(R, g.slice(0, order - 1)).map(f32);
    }
    const aB = f32(T.alpha * Bh);
    return this.update(f32(T.sigma / S.sigma), x, f32(T.alpha * hPhi1), m0, aB, rhos, rks, older, null, 0);
  }

  /** UniC-p: recompute the step sigmas[i-1] -> sigmas[i] from lastSample with the fresh output mThis. */
  private corrector(mThis: Tensor, i: number, order: number): Tensor {
    const outs = this.modelOutputs;
    const T = alphaSigma(this.sigmas![i]);
    const S = alphaSigma(this.sigmas![i - 1]);
    const h = f32(T.lambda - S.lambda);
    const m0 = outs[outs.length - 1]!;
    const rks: number[] = [];
    const older: Tensor[] = [];
    for (let k = 1; k < order; k++) {
      rks.push(f32(f32(this.lambdaAt(i - (k + 1)) - S.lambda) / h));
      older.push(outs[outs.length - 1 - k]!);
    }
    const { hPhi1, Bh, g } = bhCoefficients(h, order, this.config.solverType === "bh1");
    let rhos: number[];
    if (order === 1) rhos = [0.5];
    else {
      const r = [...rks, 1];
      const R = Array.from({ length: order }, (_, p) => r.map((v) => Math.pow(v, p)));
      rhos = solveSmall(R, g).map(f32);
    }
    const aB = f32(T.alpha * Bh);
    const rhoLast = rhos[rhos.length - 1];
    return this.update(f32(T.sigma / S.sigma), this.lastSample!, f32(T.alpha * hPhi1), m0, aB, rhos.slice(0, -1), rks, older, mThis, rhoLast);
  }

  /**
   * cx·x - cm·m0 - aB·(sum_k rho_k·(m_k - m0)/r_k + rhoT·(mT - m0)), expanded into one linear
   * combination of x, m0, the m_k and mT.
   */
  private update(cx: number, x: Tensor, cm: number, m0: Tensor, aB: number, rhos: number[], rks: number[], older: Tensor[],
    mT: Tensor | null, rhoT: number): Tensor {
    let c0 = -cm;
    const terms: [number, Tensor][] = [[cx, x]];
    rhos.forEach((rho, k) => {
      const w = (aB * rho) / rks[k];
      c0 += w;
      terms.push([-w, older[k]]);
    });
    if (mT) {
      c0 += aB * rhoT;
      terms.push([-aB * rhoT, mT]);
    }
    terms.push([c0, m0]);
    return linearCombination(terms);
  }

  /** x_t = alpha_t·x0 + sigma_t·noise at the timestep's sigma. */
  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    this.checkAddNoise(original, noise);
    const { alpha, sigma } = alphaSigma(this.sigmaForNoising(timestep));
    return linearCombination([[alpha, original], [sigma, noise]]);
  }
}
