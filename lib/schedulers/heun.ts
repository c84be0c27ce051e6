/**
 * Heun's second-order sampler: Karras et al. 2022, "Elucidating the Design Space of
 * Diffusion-Based Generative Models" (arXiv:2206.00364), Algorithm 1 (deterministic):
 *   d_i  = (x_i - x0(x_i, sigma_i)) / sigma_i                       (line 4)
 *   x'   = x_i + (sigma_{i+1} - sigma_i)·d_i                        (line 5, Euler predictor)
 *   d'   = (x' - x0(x', sigma_{i+1})) / sigma_{i+1}                  (line 7)
 *   x_{i+1} = x_i + (sigma_{i+1} - sigma_i)·(d_i + d')/2            (line 8, trapezoidal corrector)
 * and a plain Euler step when sigma_{i+1} = 0 (line 6). Each (predictor, corrector) pair is two
 * calls of step(), which is why the timesteps after the first appear twice.
 */
import { Tensor } from "../tensor";
import { axpby, clamp } from "../ops";
import { SchedulerConfigInput, SigmaSchedulerBase, StepOptions, StepOutput, f32, x0FromSigma } from "./scheduler";

export class HeunDiscreteScheduler extends SigmaSchedulerBase {
  readonly order = 2;
  /** predictor state: d_i, the step size and x_i (null dt: the next call is a predictor) */
  private dt: number | null = null;
  private prevDerivative: Tensor | null = null;
  private savedSample: Tensor | null = null;

  constructor(config: SchedulerConfigInput = {}) {
    super("HeunDiscreteScheduler", config);
  }

  protected clearState(): void {
    this.prevDerivative?.dispose();
    this.savedSample?.dispose();
    this.prevDerivative = null;
    this.savedSample = null;
    this.dt = null;
  }

  /** True when the next step() is a predictor (first-order) step. */
  get stateInFirstOrder(): boolean {
    return this.dt === null;
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, _opts: StepOptions): StepOutput {
    const sigmas = this.requireTimesteps("step").sigmas!;
    const i = this.currentStepIndex(t);
    const first = this.dt === null;
    const sigma = first ? sigmas[i] : sigmas[i - 1];
    const sigmaNext = first ? sigmas[i + 1] : sigmas[i];
    const sigmaIn = first ? sigma : sigmaNext; // the noise level of x in this call
    let x0 = x0FromSigma(this.config.predictionType, x, m, sigmaIn);
    if (this.config.clipSample) x0 = clamp(x0, -this.config.clipSampleRange, this.config.clipSampleRange);

    let prev: Tensor;
    if (first) {
      const d = axpby(1 / sigma, x, -1 / sigma, x0);
      const dt = f32(sigmaNext - sigma);
      prev = axpby(1, x, dt, d);
      this.prevDerivative = this.hold(d);
      this.savedSample = this.retain(x);
      this.dt = dt;
    } else {
      const d2 = axpby(1 / sigmaNext, x, -1 / sigmaNext, x0);
      const h = this.dt! / 2;
      prev = axpby(1, this.savedSample!, h, this.prevDerivative!, h, d2);
      this.clearState();
    }
    this.stepIdx = i + 1;
    return { prevSample: prev, predOriginalSample: x0 };
  }
}
