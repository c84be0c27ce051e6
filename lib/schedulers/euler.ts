/**
 * Euler sampler for the probability-flow ODE dx/dsigma = (x - x0(x, sigma)) / sigma:
 * Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative
 * Models" (arXiv:2206.00364), Algorithm 2 without the Heun correction, including its optional
 * "churn": sigma_hat = sigma·(1 + gamma), x_hat = x + sqrt(sigma_hat^2 - sigma^2)·S_noise·z,
 * gamma = min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax] (Algorithm 2, lines 4-6).
 *   d = (x_hat - x0) / sigma_hat                 (eq. 3 / Algorithm 2 line 7)
 *   x_next = x_hat + (sigma_next - sigma_hat)·d  (line 8)
 * which is one fused pass: x_next = (1 + r)·x_hat - r·x0 with r = (sigma_next - sigma_hat)/sigma_hat.
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerConfigInput, SigmaSchedulerBase, StepOptions, StepOutput, f32, fsqrt, x0FromSigma } from "./scheduler";

export class EulerDiscreteScheduler extends SigmaSchedulerBase {
  readonly order = 1;

  constructor(config: SchedulerConfigInput = {}) {
    super("EulerDiscreteScheduler", config);
  }

  protected clearState(): void {}

  protected stepImpl(m: Tensor, t: number, xIn: Tensor, opts: StepOptions): StepOutput {
    const sigmas = this.requireTimesteps("step").sigmas!;
    const i = this.currentStepIndex(t);
    const sChurn = opts.sChurn ?? 0;
    const sTmin = opts.sTmin ?? 0;
    const sTmax = opts.sTmax ?? Infinity;
    const sNoise = opts.sNoise ?? 1;
    for (const [k, v] of [["sChurn", sChurn], ["sTmin", sTmin], ["sTmax", sTmax], ["sNoise", sNoise]] as const) {
      if (typeof v !== "number" || Number.isNaN(v) || (k !== "sTmax" && !Number.isFinite(v)) || (k === "sChurn" && v < 0)) {
        throw new RangeError(`EulerDiscreteScheduler.step: ${k} must be a ${k === "sChurn" ? "finite number >= 0" : "number"}, got ${String(v)}`);
      }
    }
    const sigma = sigmas[i];
    const sigmaNext = sigmas[i + 1];
    const gamma = sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (sigmas.length - 1), Math.SQRT2 - 1) : 0;
    // diffusers draws this noise on every step, used or not, so the generator stream stays aligned
    const z = this.drawNoise(m, opts);
    const sigmaHat = f32(sigma * f32(gamma + 1));
    let x = xIn;
    if (gamma > 0) {
      const churn = fsqrt(f32(f32(sigmaHat * sigmaHat) - f32(sigma * sigma)));
      x = axpby(1, xIn, f32(sNoise) * churn, z);
    }
    // v_prediction converts with sigma, not sigma_hat, as diffusers does
    const x0 = x0FromSigma(this.config.predictionType, x, m, this.config.predictionType === "v_prediction" ? sigma : sigmaHat);
    const r = f32(sigmaNext - sigmaHat) / sigmaHat;
    const prev = axpby(1 + r, x, -r, x0);
    this.stepIdx = i + 1;
    return { prevSample: prev, predOriginalSample: x0 };
  }
}
