/**
 * Linear multistep (LMS) sampler for the probability-flow ODE dx/dsigma = d(x, sigma) =
 * (x - x0(x, sigma)) / sigma: the Adams-Bashforth method on the non-uniform sigma grid, as in
 * Karras et al. 2022 (arXiv:2206.00364, §3 / the k-diffusion `sample_lms` companion code):
 *   x_{i+1} = x_i + sum_{j<k} c_j · d_{i-j},
 *   c_j = integral from sigma_i to sigma_{i+1} of l_j(tau) dtau,
 *   l_j(tau) = prod_{m<k, m != j} (tau - sigma_{i-m}) / (sigma_{i-j} - sigma_{i-m})
 * (the Lagrange basis through the last k sigmas), k = min(i + 1, order).
 *
 * diffusers integrates l_j with scipy's quad on a float32 integrand; l_j is a polynomial of degree
 * k - 1 <= 3, so a 3-point Gauss-Legendre rule (exact to degree 5) in float64 gives the integral
 * itself, and it is then rounded to float32 as diffusers' coefficients meet the float32 tensors.
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerConfigInput, SigmaSchedulerBase, StepOptions, StepOutput, f32, linearCombination, x0FromSigma } from "./scheduler";

const GL_NODES = [-Math.sqrt(3 / 5), 0, Math.sqrt(3 / 5)];
const GL_WEIGHTS = [5 / 9, 8 / 9, 5 / 9];

/** c_j above for the sigma grid `sigmas` at step i with k points (float64). */
export function lmsCoefficient(sigmas: ArrayLike<number>, i: number, k: number, j: number): number {
  const basis = (tau: number): number => {
    let p = 1;
    for (let mm = 0; mm < k; mm++) {
      if (mm === j) continue;
      p *= (tau - sigmas[i - mm]) / (sigmas[i - j] - sigmas[i - mm]);
    }
    return p;
  };
  const a = sigmas[i];
  const b = sigmas[i + 1];
  const half = (b - a) / 2;
  const mid = (a + b) / 2;
  let s = 0;
  for (let q = 0; q < 3; q++) s += GL_WEIGHTS[q] * basis(mid + half * GL_NODES[q]);
  return s * half;
}

export class LMSDiscreteScheduler extends SigmaSchedulerBase {
  readonly order = 1;
  /** d_{i-k+1} .. d_i (held), newest last */
  private derivatives: Tensor[] = [];

  constructor(config: SchedulerConfigInput = {}) {
    super("LMSDiscreteScheduler", config);
  }

  protected clearState(): void {
    for (const d of this.derivatives) d.dispose();
    this.derivatives = [];
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const order = opts.order ?? 4;
    if (!Number.isInteger(order) || order < 1 || order > 4) {
      throw new RangeError(`LMSDiscreteScheduler.step: order must be one of 1, 2, 3, 4, got ${String(order)}`);
    }
    const sigmas = this.requireTimesteps("step").sigmas!;
    const i = this.currentStepIndex(t);
    const sigma = sigmas[i];
    const x0 = x0FromSigma(this.config.predictionType, x, m, sigma);
    const d = axpby(1 / sigma, x, -1 / sigma, x0);
    this.derivatives.push(this.hold(d));
    while (this.derivatives.length > order) this.derivatives.shift()!.dispose();

    const k = Math.min(i + 1, order);
    const terms: [number, Tensor][] = [[1, x]];
    for (let j = 0; j < k; j++) terms.push([f32(lmsCoefficient(sigmas, i, k, j)), this.derivatives[this.derivatives.length - 1 - j]]);
    const prev = linearCombination(terms);
    this.stepIdx = i + 1;
    return { prevSample: prev, predOriginalSample: x0 };
  }
}
