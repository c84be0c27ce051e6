// Training objectives, as diffusers' examples/text_to_image/train_text_to_image.py (0.27.2)
// computes them: the forward process (DDPMScheduler.add_noise), the epsilon / v-prediction
// targets, Min-SNR-γ weighting (Hang et al. 2023, eq. 6 and its v-prediction form), condition
// dropout (classifier-free guidance training, Ho & Salimans 2022 §3.2), and the autoencoder's
// reconstruction + KL loss (Rombach et al. 2022, appendix G; the LDM "KL-reg" VAE).
//
// Per-sample scheduler coefficients are computed on the host in float32 exactly as torch does
// (float32 ᾱ, sqrt of float32 values), then applied on the device as [B,1,1,1] tensors.
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import type { Rng } from "./rng";

const f32 = Math.fround;

export type TrainPredictionType = "epsilon" | "v_prediction";
export const TRAIN_PREDICTION_TYPES: readonly TrainPredictionType[] = ["epsilon", "v_prediction"];

function checkTimesteps(op: string, timesteps: ArrayLike<number>, alphasCumprod: Float32Array): void {
  for (let i = 0; i < timesteps.length; i++) {
    const t = timesteps[i];
    if (!Number.isInteger(t) || t < 0 || t >= alphasCumprod.length)
      throw new RangeError(`${op}: timesteps[${i}] must be an integer in [0, ${alphasCumprod.length - 1}], got ${t}`);
  }
}

/**
 * √ᾱ_t and √(1 − ᾱ_t) per sample, float32 as diffusers' add_noise / compute_snr:
 * `alphas_cumprod[t] ** 0.5` and `(1 - alphas_cumprod[t]) ** 0.5` on float32 tensors.
 */
export function noiseCoefficients(alphasCumprod: Float32Array, timesteps: ArrayLike<number>): { sqrtAlpha: Float32Array; sqrtOneMinusAlpha: Float32Array } {
  checkTimesteps("noiseCoefficients", timesteps, alphasCumprod);
  const n = timesteps.length;
  const sqrtAlpha = new Float32Array(n), sqrtOneMinusAlpha = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = alphasCumprod[timesteps[i]];
    sqrtAlpha[i] = f32(Math.sqrt(a));
    sqrtOneMinusAlpha[i] = f32(Math.sqrt(f32(1 - a)));
  }
  return { sqrtAlpha, sqrtOneMinusAlpha };
}

/** [B] host values as a [B,1,...,1] tensor that broadcasts against `like`. */
function perSample(values: Float32Array, like: Tensor): Tensor {
  if (like.shape[0] !== values.length)
    throw new RangeError(`expected ${values.length} samples along dim 0, got shape [${like.shape.join(",")}]`);
  const shape = [values.length, ...Array(like.ndim - 1).fill(1)];
  return Tensor.fromArray(values, shape, { device: like.device, dtype: like.dtype });
}

function sameShape(op: string, a: Tensor, b: Tensor, an: string, bn: string): void {
  if (a.ndim !== b.ndim || a.shape.some((d, i) => d !== b.shape[i]))
    throw new RangeError(`${op}: ${an} [${a.shape.join(",")}] and ${bn} [${b.shape.join(",")}] must have the same shape`);
}

/** The forward process q(x_t | x_0): √ᾱ_t·x0 + √(1−ᾱ_t)·noise (DDPM eq. 4; diffusers add_noise). */
export function addNoise(x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>, alphasCumprod: Float32Array): Tensor {
  sameShape("addNoise", x0, noise, "x0", "noise");
  const { sqrtAlpha, sqrtOneMinusAlpha } = noiseCoefficients(alphasCumprod, timesteps);
  return tidy(() => ops.add(ops.mul(x0, perSample(sqrtAlpha, x0)), ops.mul(noise, perSample(sqrtOneMinusAlpha, x0))));
}

/** The v-prediction target √ᾱ_t·noise − √(1−ᾱ_t)·x0 (Salimans & Ho 2022 §4; diffusers get_velocity). */
export function velocity(x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>, alphasCumprod: Float32Array): Tensor {
  sameShape("velocity", x0, noise, "x0", "noise");
  const { sqrtAlpha, sqrtOneMinusAlpha } = noiseCoefficients(alphasCumprod, timesteps);
  return tidy(() => ops.sub(ops.mul(noise, perSample(sqrtAlpha, x0)), ops.mul(x0, perSample(sqrtOneMinusAlpha, x0))));
}

/** What the network is trained to output: the noise (epsilon) or the velocity. */
export function diffusionTarget(predictionType: TrainPredictionType, x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>, alphasCumprod: Float32Array): Tensor {
  if (predictionType === "epsilon") return noise.detach();
  if (predictionType === "v_prediction") return velocity(x0, noise, timesteps, alphasCumprod);
  throw new RangeError(`diffusionTarget: predictionType must be one of ${TRAIN_PREDICTION_TYPES.join(", ")}, got ${JSON.stringify(predictionType)}`);
}

/** SNR(t) = (√ᾱ_t / √(1−ᾱ_t))², float32 as diffusers.training_utils.compute_snr. */
export function computeSnr(alphasCumprod: Float32Array, timesteps: ArrayLike<number>): Float32Array {
  const { sqrtAlpha, sqrtOneMinusAlpha } = noiseCoefficients(alphasCumprod, timesteps);
  return sqrtAlpha.map((a, i) => {
    const q = f32(a / sqrtOneMinusAlpha[i]);
    return f32(q * q);
  });
}

/**
 * Min-SNR-γ loss weights (float32, as train_text_to_image.py --snr_gamma): min(SNR, γ)/SNR for
 * epsilon prediction, min(SNR, γ)/(SNR + 1) for v-prediction.
 */
export function minSnrWeights(snr: Float32Array, gamma: number, predictionType: TrainPredictionType): Float32Array {
  if (typeof gamma !== "number" || !(gamma > 0)) throw new RangeError(`minSnrWeights: gamma must be > 0, got ${gamma}`);
  const g = f32(gamma);
  return snr.map((s) => {
    const m = Math.min(s, g);
    if (predictionType === "epsilon") return f32(m / s);
    if (predictionType === "v_prediction") return f32(m / f32(s + 1));
    throw new RangeError(`minSnrWeights: predictionType must be one of ${TRAIN_PREDICTION_TYPES.join(", ")}, got ${JSON.stringify(predictionType)}`);
  });
}

export interface DiffusionLossOptions {
  predictionType?: TrainPredictionType;
  /** Min-SNR-γ (e.g. 5); null/undefined: plain MSE. */
  snrGamma?: number | null;
}

/**
 * The denoising loss for a prediction `pred` of the noisy x0 at `timesteps`: mean squared error
 * against the target, or with Min-SNR-γ, mean_b(w_b · mean_{c,h,w}(pred − target)²). Returns a
 * one-element tensor (recorded for backward when pred requires grad).
 */
export function diffusionLoss(
  pred: Tensor, x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>, alphasCumprod: Float32Array, opts: DiffusionLossOptions = {},
): Tensor {
  const predictionType = opts.predictionType ?? "epsilon";
  sameShape("diffusionLoss", pred, x0, "pred", "x0");
  return tidy(() => {
    const target = diffusionTarget(predictionType, x0, noise, timesteps, alphasCumprod);
    const sq = ops.square(ops.sub(pred, target));
    if (opts.snrGamma === null || opts.snrGamma === undefined) return ops.mean(sq);
    const w = minSnrWeights(computeSnr(alphasCumprod, timesteps), opts.snrGamma, predictionType);
    const dims = Array.from({ length: pred.ndim - 1 }, (_, i) => i + 1);
    const perSampleMse = ops.mean(sq, dims);
    return ops.mean(ops.mul(perSampleMse, Tensor.fromArray(w, [w.length], { device: pred.device })));
  });
}

// ---- condition dropout

/**
 * Replaces each caption by the empty prompt with probability `rate` (one draw per caption, in
 * order). Returns the new captions and how many were dropped.
 */
export function dropConditions(captions: readonly string[], rate: number, rng: Rng): { captions: string[]; dropped: number } {
  if (typeof rate !== "number" || !(rate >= 0 && rate <= 1)) throw new RangeError(`condDropout must be in [0, 1], got ${rate}`);
  let dropped = 0;
  const out = captions.map((c) => {
    if (rng.float() < rate) { dropped++; return ""; }
    return c;
  });
  return { captions: out, dropped };
}

// ---- autoencoder

export type ReconstructionLoss = "l1" | "l2";
export const RECONSTRUCTION_LOSSES: readonly ReconstructionLoss[] = ["l1", "l2"];

export interface VaeLossOptions {
  /** "l1" (mean |recon − image|) or "l2" (mean squared error). Default "l1". */
  reconstruction?: ReconstructionLoss;
  /** β of β·KL; default 1e-6 (the SD VAE's KL weight). */
  klWeight?: number;
  /**
   * Weight of the image-gradient difference term mean|∂x r − ∂x i| + mean|∂y r − ∂y i| (finite
   * differences; sharpens edges without a perceptual network). Default 0.
   */
  gradientWeight?: number;
}

export interface VaeLossTerms {
  /** The total, one element, recorded for backward. */
  loss: Tensor;
  reconstruction: Tensor;
  /** KL(N(μ,σ²) ‖ N(0,1)) summed over (C,H,W), mean over the batch. */
  kl: Tensor;
  gradient: Tensor | null;
}

/**
 * KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ_{c,h,w} (μ² + σ² − 1 − log σ²) per sample (diffusers'
 * DiagonalGaussianDistribution.kl()), then the batch mean: shape [].
 */
export function klDivergence(mean: Tensor, logvar: Tensor): Tensor {
  sameShape("klDivergence", mean, logvar, "mean", "logvar");
  return tidy(() => {
    const dims = Array.from({ length: mean.ndim - 1 }, (_, i) => i + 1);
    const terms = ops.sub(ops.add(ops.square(mean), ops.exp(logvar)), ops.add(logvar, 1));
    return ops.mean(ops.mul(ops.sum(terms, dims), 0.5));
  });
}

/** mean|∂x a − ∂x b| + mean|∂y a − ∂y b| over NCHW images (forward differences). */
export function gradientDifference(a: Tensor, b: Tensor): Tensor {
  sameShape("gradientDifference", a, b, "a", "b");
  if (a.ndim !== 4) throw new RangeError(`gradientDifference: images must be [B,C,H,W], got [${a.shape.join(",")}]`);
  return tidy(() => {
    const d = ops.sub(a, b);
    const [, , H, W] = d.shape;
    const dx = ops.sub(ops.slice(d, 3, 1, W), ops.slice(d, 3, 0, W - 1));
    const dy = ops.sub(ops.slice(d, 2, 1, H), ops.slice(d, 2, 0, H - 1));
    return ops.add(ops.mean(ops.abs(dx)), ops.mean(ops.abs(dy)));
  });
}

/** The autoencoder objective: reconstruction + β·KL (+ gradient-difference term). */
export function vaeLoss(image: Tensor, recon: Tensor, mean: Tensor, logvar: Tensor, opts: VaeLossOptions = {}): VaeLossTerms {
  const kind = opts.reconstruction ?? "l1";
  if (!RECONSTRUCTION_LOSSES.includes(kind))
    throw new RangeError(`vaeLoss: reconstruction must be one of ${RECONSTRUCTION_LOSSES.join(", ")}, got ${JSON.stringify(kind)}`);
  const beta = opts.klWeight ?? 1e-6;
  const gw = opts.gradientWeight ?? 0;
  if (!(beta >= 0)) throw new RangeError(`vaeLoss: klWeight must be >= 0, got ${beta}`);
  if (!(gw >= 0)) throw new RangeError(`vaeLoss: gradientWeight must be >= 0, got ${gw}`);
  sameShape("vaeLoss", recon, image, "recon", "image");
  return tidy(() => {
    const diff = ops.sub(recon, image);
    const reconstruction = ops.mean(kind === "l1" ? ops.abs(diff) : ops.square(diff));
    const kl = klDivergence(mean, logvar);
    let loss = ops.add(reconstruction, ops.mul(kl, beta));
    let gradient: Tensor | null = null;
    if (gw > 0) {
      gradient = gradientDifference(recon, image);
      loss = ops.add(loss, ops.mul(gradient, gw));
    }
    return { loss, reconstruction, kl, gradient };
  });
}

/** z = μ + σ·ε with σ = exp(logvar / 2) (the reparameterisation; gradients reach μ and logvar). */
export function samplePosterior(mean: Tensor, logvar: Tensor, eps: Tensor): Tensor {
  sameShape("samplePosterior", mean, eps, "mean", "eps");
  return tidy(() => ops.add(mean, ops.mul(ops.exp(ops.mul(logvar, 0.5)), eps)));
}
