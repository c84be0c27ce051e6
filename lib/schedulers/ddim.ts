/**
 * DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502).
 *
 * With a = alpha_bar_t, a' = alpha_bar_{t'} (t' = t - N/n; final_alpha_cumprod past the end):
 *   x0      = (x_t - sqrt(1 - a)·eps) / sqrt(a)                                   ("predicted x0", eq. 12)
 *   sigma   = eta · sqrt((1 - a')/(1 - a)) · sqrt(1 - a/a')                       (eq. 16)
 *   x_{t'}  = sqrt(a')·x0 + sqrt(1 - a' - sigma^2)·eps + sigma·z                   (eq. 12)
 * eta = 0 is the deterministic DDIM sampler, eta = 1 the DDPM posterior variance.
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerBase, SchedulerConfigInput, StepOptions, StepOutput, copyOf, f32, fsqrt } from "./scheduler";

export class DDIMScheduler extends SchedulerBase {
  readonly order = 1;

  constructor(config: SchedulerConfigInput = {}) {
    super("DDIMScheduler", config);
  }

  protected clearState(): void {}

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const eta = opts.eta ?? 0;
    if (typeof eta !== "number" || !(eta >= 0) || !Number.isFinite(eta)) {
      throw new RangeError(`DDIMScheduler.step: eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM-like), got ${String(eta)}`);
    }
    const n = this.requireTimesteps("step").numInferenceSteps;
    const prevT = t - Math.floor(this.config.numTrainTimesteps / n);
    const a = this.alphaBarAt(t);
    const ap = prevT >= 0 ? this.alphaBarAt(prevT) : this.noiseSchedule.finalAlphaCumprod;
    const b = f32(1 - a);
    const sqrtA = fsqrt(a);
    const sqrtB = fsqrt(b);

    // x0 and eps from the model output
    let x0: Tensor;
    let eps: Tensor;
    switch (this.config.predictionType) {
      case "epsilon":
        x0 = axpby(1 / sqrtA, x, -sqrtB / sqrtA, m);
        eps = m;
        break;
      case "sample":
        x0 = copyOf(m);
        eps = axpby(1 / sqrtB, x, -sqrtA / sqrtB, x0);
        break;
      case "v_prediction": // Salimans & Ho 2022: x0 = sqrt(a)·x - sqrt(1-a)·v, eps = sqrt(a)·v + sqrt(1-a)·x
        x0 = axpby(sqrtA, x, -sqrtB, m);
        eps = axpby(sqrtA, m, sqrtB, x);
        break;
    }
    x0 = this.clipOrThreshold(x0);

    // eq. 16
    const variance = f32(f32(f32(1 - ap) / b) * f32(1 - f32(a / ap)));
    const std = f32(f32(eta) * fsqrt(variance));
    if (opts.useClippedModelOutput) eps = axpby(1 / sqrtB, x, -sqrtA / sqrtB, x0); // GLIDE: eps from the clipped x0

    // eq. 12: "direction pointing to x_t", then the random part
    const dirCoef = fsqrt(f32(f32(1 - ap) - f32(std * std)));
    const prev = eta > 0
      ? axpby(fsqrt(ap), x0, dirCoef, eps, std, this.drawNoise(m, opts))
      : axpby(fsqrt(ap), x0, dirCoef, eps);
    return { prevSample: prev, predOriginalSample: x0 };
  }

  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    return this.addNoiseAlphaBar(original, noise, timestep);
  }
}
