/**
 * DDPM ancestral sampling: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
 * (arXiv:2006.11239), on a strided grid t -> t' = t - N/n (Nichol & Dhariwal 2021, §4).
 *
 * With alpha_bar = alphas_cumprod, a = alpha_bar_t, a' = alpha_bar_t' (1 for t' < 0),
 * beta_t = 1 - a / a' (the effective beta of the stride):
 *   x0     from the model output (eq. 15 for epsilon; see scheduler.ts for v / sample)
 *   mean   = sqrt(a')·beta_t / (1 - a) · x0 + sqrt(a/a')·(1 - a') / (1 - a) · x_t      (eq. 7)
 *   x_t'   = mean + sigma_t·z  (t > 0), z ~ N(0, I)
 * with sigma_t^2 = beta~_t = (1 - a')/(1 - a)·beta_t ("fixed_small", eq. 7) or beta_t ("fixed_large"),
 * both named in §3.2; "fixed_small_log" is beta~_t through exp(0.5·log(.)).
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerBase, SchedulerConfigInput, StepOptions, StepOutput, f32, fexp, flog, fsqrt, x0FromAlphaBar } from "./scheduler";

export const DDPM_VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large"] as const;

export class DDPMScheduler extends SchedulerBase {
  readonly order = 1;

  constructor(config: SchedulerConfigInput = {}) {
    super("DDPMScheduler", config);
    const vt = this.config.varianceType;
    if (!(DDPM_VARIANCE_TYPES as readonly (string | null)[]).includes(vt)) {
      throw new RangeError(
        `DDPMScheduler: variance_type must be one of ${DDPM_VARIANCE_TYPES.map((v) => `"${v}"`).join(", ")}, got ${JSON.stringify(vt)}`,
      );
    }
  }

  protected clearState(): void {}

  /** diffusers' previous_timestep: always t - N // n, whatever the spacing. */
  private previousTimestep(t: number): number {
    return t - Math.floor(this.config.numTrainTimesteps / this.requireTimesteps("step").numInferenceSteps);
  }

  /** The standard deviation of the added noise, in diffusers' float32 order. */
  private noiseStd(b: number, bp: number, cb: number): number {
    const small = Math.max(f32(f32(bp / b) * cb), f32(1e-20)); // beta~_t, clamped before any log
    switch (this.config.varianceType) {
      case "fixed_small":
        return fsqrt(small);
      case "fixed_small_log":
        return fexp(f32(0.5 * flog(small)));
      default: // fixed_large
        return fsqrt(cb);
    }
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, opts: StepOptions): StepOutput {
    const prevT = this.previousTimestep(t);
    const a = this.alphaBarAt(t);
    const ap = prevT >= 0 ? this.alphaBarAt(prevT) : 1;
    const b = f32(1 - a);
    const bp = f32(1 - ap);
    const ca = f32(a / ap); // alpha_t of the stride
    const cb = f32(1 - ca); // beta_t of the stride

    const x0 = this.clipOrThreshold(x0FromAlphaBar(this.config.predictionType, x, m, fsqrt(a), fsqrt(b)));
    // eq. 7: posterior mean coefficients of x0 and x_t
    const c0 = f32(f32(fsqrt(ap) * cb) / b);
    const c1 = f32(f32(fsqrt(ca) * bp) / b);
    if (t > 0) {
      const z = this.drawNoise(m, opts);
      return { prevSample: axpby(c0, x0, c1, x, this.noiseStd(b, bp, cb), z), predOriginalSample: x0 };
    }
    return { prevSample: axpby(c0, x0, c1, x), predOriginalSample: x0 };
  }

  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    return this.addNoiseAlphaBar(original, noise, timestep);
  }
}
