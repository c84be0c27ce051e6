/**
 * Euler ancestral sampler: an Euler step of the probability-flow ODE down to sigma_down, then fresh
 * noise of size sigma_up, so that the marginal at sigma_next is matched (the ancestral step of
 * Ho et al. 2020 written for the variance-exploding sigma, as in Karras et al. 2022's k-diffusion
 * companion code, `get_ancestral_step`):
 *   sigma_up   = sqrt(sigma_next^2 · (sigma^2 - sigma_next^2) / sigma^2)
 *   sigma_down = sqrt(sigma_next^2 - sigma_up^2)
 *   d = (x - x0) / sigma;  x_next = x + (sigma_down - sigma)·d + sigma_up·z
 * fused into one pass: x_next = (1 + r)·x - r·x0 + sigma_up·z, r = (sigma_down - sigma)/sigma.
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerConfigInput, SigmaSchedulerBase, StepOptions, StepOutput, f32, fsqrt, x0FromSigma } from "./scheduler";

export class EulerAncestralDiscreteScheduler extends SigmaSchedulerBase {
  readonly order = 1;

  constructor(config: SchedulerConfigInput = {}) {
    super("EulerAncestralDiscreteScheduler", config);
    const p = this.config.predictionType;
    if (p !== "epsilon" && p !== "v_prediction") {
      throw new RangeError(`EulerAncestralDiscreteScheduler: prediction_type must be one of "epsilon", "v_prediction", got "${p}"`);
    }
  }

  protected clearState(): void {}

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const sigmas = this.requireTimesteps("step").sigmas!;
    const i = this.currentStepIndex(t);
    const sigma = sigmas[i];
    const sigmaNext = sigmas[i + 1];
    const x0 = x0FromSigma(this.config.predictionType, x, m, sigma);
    const s2 = f32(sigma * sigma);
    const n2 = f32(sigmaNext * sigmaNext);
    const sigmaUp = fsqrt(f32(f32(n2 * f32(s2 - n2)) / s2));
    const sigmaDown = fsqrt(f32(n2 - f32(sigmaUp * sigmaUp)));
    const r = f32(sigmaDown - sigma) / sigma;
    const z = this.drawNoise(m, opts);
    const prev = axpby(1 + r, x, -r, x0, sigmaUp, z);
    this.stepIdx = i + 1;
    return { prevSample: prev, predOriginalSample: x0 };
  }
}
