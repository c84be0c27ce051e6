/**
 * PNDM: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"
 * (arXiv:2202.09778). The transfer from t to t' = t - delta with a noise estimate e (eq. 11, the
 * DDIM step rewritten):
 *   phi(x_t, e, t, t') = sqrt(a'/a)·x_t - (a' - a) / (a·sqrt(1 - a') + sqrt(a·(1 - a)·a'))·e
 * and the estimate e is combined from past model outputs:
 *  - PRK (pseudo Runge-Kutta, eq. 13): four evaluations e1..e4 at t, t - delta/2 (twice), t - delta,
 *    then e' = (e1 + 2·e2 + 2·e3 + e4)/6; used for the first three steps unless skip_prk_steps.
 *  - PLMS (pseudo linear multistep, eq. 12): e' = (55·e_t - 59·e_{t-1} + 37·e_{t-2} - 9·e_{t-3})/24,
 *    with the lower-order Adams-Bashforth forms while fewer outputs exist. With skip_prk_steps the
 *    first step is a second-order (Heun-like) step that is taken twice: at the repeated timestep the
 *    model output is averaged with the first one and the step from the first timestep is redone.
 */
import { Tensor } from "../tensor";
import { axpby } from "../ops";
import { SchedulerBase, SchedulerConfigInput, StepOptions, StepOutput, f32, fsqrt, linearCombination } from "./scheduler";

export class PNDMScheduler extends SchedulerBase {
  readonly order = 1;
  private counter = 0;
  /** past model outputs e (held), newest last */
  private ets: Tensor[] = [];
  private curSample: Tensor | null = null;
  private curModelOutput: Tensor | null = null;

  constructor(config: SchedulerConfigInput = {}) {
    super("PNDMScheduler", config);
    const p = this.config.predictionType;
    if (p !== "epsilon" && p !== "v_prediction") {
      throw new RangeError(`PNDMScheduler: prediction_type must be one of "epsilon", "v_prediction", got "${p}"`);
    }
  }

  protected clearState(): void {
    for (const t of this.ets) t.dispose();
    this.ets = [];
    this.curSample?.dispose();
    this.curSample = null;
    this.curModelOutput?.dispose();
    this.curModelOutput = null;
    this.counter = 0;
  }

  private get stride(): number {
    return Math.floor(this.config.numTrainTimesteps / this.requireTimesteps("step").numInferenceSteps);
  }

  protected stepImpl(m: Tensor, t: number, x: Tensor, _opts: StepOptions): StepOutput {
    const grid = this.requireTimesteps("step");
    const prk = grid.prkTimesteps ?? new Float64Array(0);
    if (this.counter >= grid.timesteps.length) {
      throw new RangeError(`PNDMScheduler.step: all ${grid.timesteps.length} steps are done; call setTimesteps() or reset() to start again`);
    }
    const prev = this.counter < prk.length && !this.config.skipPrkSteps ? this.stepPrk(m, t, x, prk) : this.stepPlms(m, t, x);
    this.counter++;
    return { prevSample: prev };
  }

  /** eq. 13: the four Runge-Kutta stages of one PRK step. */
  private stepPrk(m: Tensor, t: number, x: Tensor, prk: Float64Array): Tensor {
    const stage = this.counter % 4;
    const prevT = t - (this.counter % 2 ? 0 : Math.floor(this.stride / 2));
    const tFrom = prk[Math.floor(this.counter / 4) * 4];
    let e = m;
    if (stage === 0) {
      this.curModelOutput?.dispose();
      this.curModelOutput = this.hold(axpby(1 / 6, m));
      this.ets.push(this.retain(m));
      this.curSample?.dispose();
      this.curSample = this.retain(x);
    } else if (stage === 1 || stage === 2) {
      const acc = this.hold(axpby(1, this.curModelOutput!, 1 / 3, m));
      this.curModelOutput!.dispose();
      this.curModelOutput = acc;
    } else {
      e = axpby(1, this.curModelOutput!, 1 / 6, m);
      this.curModelOutput!.dispose();
      this.curModelOutput = null;
    }
    return this.transfer(this.curSample ?? x, tFrom, prevT, e);
  }

  /** eq. 12 with the warm-up of skip_prk_steps. */
  private stepPlms(m: Tensor, tIn: number, xIn: Tensor): Tensor {
    let t = tIn;
    let x = xIn;
    let prevT = t - this.stride;
    if (this.counter !== 1) {
      while (this.ets.length > 3) this.ets.shift()!.dispose();
      this.ets.push(this.retain(m));
    } else {
      // the repeated timestep: redo the step from the first timestep
      prevT = t;
      t = t + this.stride;
    }
    const ets = this.ets;
    const e1 = ets[ets.length - 1];
    const e2 = ets[ets.length - 2];
    const e3 = ets[ets.length - 3];
    const e4 = ets[ets.length - 4];
    let e: Tensor;
    let releaseCur = false;
    if (ets.length === 1 && this.counter === 0) {
      e = m;
      this.curSample?.dispose();
      this.curSample = this.retain(x);
    } else if (ets.length === 1 && this.counter === 1) {
      e = axpby(0.5, m, 0.5, e1);
      x = this.curSample!;
      releaseCur = true;
    } else if (ets.length === 2) {
      e = axpby(1.5, e1, -0.5, e2);
    } else if (ets.length === 3) {
      e = axpby(23 / 12, e1, -16 / 12, e2, 5 / 12, e3);
    } else {
      e = linearCombination([[55 / 24, e1], [-59 / 24, e2], [37 / 24, e3], [-9 / 24, e4]]);
    }
    const prev = this.transfer(x, t, prevT, e);
    if (releaseCur) {
      this.curSample!.dispose();
      this.curSample = null;
    }
    return prev;
  }

  /** eq. 11, phi(x_t, e, t, t'), in diffusers' float32 order. */
  private transfer(x: Tensor, t: number, prevT: number, e: Tensor): Tensor {
    const a = this.alphaBarAt(t);
    const ap = prevT >= 0 ? this.alphaBarAt(prevT) : this.noiseSchedule.finalAlphaCumprod;
    const b = f32(1 - a);
    const bp = f32(1 - ap);
    let eps = e;
    if (this.config.predictionType === "v_prediction") eps = axpby(fsqrt(a), e, fsqrt(b), x); // v -> eps
    const sampleCoef = fsqrt(f32(ap / a));
    const denom = f32(f32(a * fsqrt(bp)) + fsqrt(f32(f32(a * b) * ap)));
    return axpby(sampleCoef, x, -f32(ap - a) / denom, eps);
  }

  addNoise(original: Tensor, noise: Tensor, timestep: number): Tensor {
    return this.addNoiseAlphaBar(original, noise, timestep);
  }
}
