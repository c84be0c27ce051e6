/**
 * Latent Consistency Model multistep sampling: Luo, Tan, Huang, Li & Zhao 2023, "Latent
 * Consistency Models" (arXiv:2310.04378), Algorithm 3, with the consistency-model boundary
 * condition of Song et al. 2023, "Consistency Models" (arXiv:2303.01469), eq. (7) / Appendix C:
 *   c_skip(t) = sigma_data^2 / (s^2 + sigma_data^2),  c_out(t) = s / sqrt(s^2 + sigma_data^2),
 *   s = t · timestep_scaling, sigma_data = 0.5
 *   f(x, t) = c_skip·x + c_out·x0(x, t)          ("denoised")
 *   x_{t'} = sqrt(alpha_bar_{t'})·f + sqrt(1 - alpha_bar_{t'})·z   (Algorithm 3, re-noising to the next
 *   timestep t' of the grid); the last step returns f itself.
 * setTimesteps(n, { originalInferenceSteps, strength }) picks the grid (see schedule.ts).
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerBase, SchedulerConfigInput, StepOptions, StepOutput, f32, fsqrt, x0FromAlphaBar } from "./scheduler";

const SIGMA_DATA_SQ = 0.25;

export class LCMScheduler extends SchedulerBase {
  readonly order = 1;

  constructor(config: SchedulerConfigInput = {}) {
    super("LCMScheduler", config);
  }

  protected clearState(): void {}

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const n = this.requireTimesteps("step").numInferenceSteps;
    const ts = this.timesteps;
    const i = this.currentStepIndex(t);
    const prevT = i + 1 < ts.length ? ts[i + 1] : t;
    const a = this.alphaBarAt(t);
    const ap = prevT >= 0 ? this.alphaBarAt(prevT) : this.noiseSchedule.finalAlphaCumprod;
    const b = f32(1 - a);
    const bp = f32(1 - ap);

    const s = f32(t * f32(this.config.timestepScaling));
    const s2 = f32(s * s);
    const cSkip = f32(SIGMA_DATA_SQ / f32(s2 + SIGMA_DATA_SQ));
    const cOut = f32(s / fsqrt(f32(s2 + SIGMA_DATA_SQ)));

    const x0 = this.clipOrThreshold(x0FromAlphaBar(this.config.predictionType, x, m, fsqrt(a), fsqrt(b)));
    const denoised = axpby(cOut, x0, cSkip, x);
    this.stepIdx = i + 1;
    if (i !== n - 1) {
      const z = this.drawNoise(m, opts);
      return { prevSample: axpby(fsqrt(ap), denoised, fsqrt(bp), z), predOriginalSample: x0, denoised };
    }
    return { prevSample: denoised, predOriginalSample: x0, denoised };
  }

  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    return this.addNoiseAlphaBar(original, noise, timestep);
  }
}
