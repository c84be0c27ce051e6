/**
 * Starting a partial schedule from an image (img2img's get_timesteps and prepare_latents pieces),
 * shared by image-to-image, inpainting and the hires fix: the strength check, where the schedule
 * starts, and the VAE posterior samples of an image.
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import type { Scheduler } from "../schedulers";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { tiledEncode, type VaeTilingOptions } from "../models/vae-tiling";

/** A strength option: a number in (0, 1], or `dflt` when absent. */
export function checkStrength(op: string, v: unknown, dflt: number): number {
  const strength = v ?? dflt;
  if (typeof strength !== "number" || !(strength > 0 && strength <= 1))
    throw new RangeError(`${op}: strength must be a number in (0, 1], got ${String(strength)}`);
  return strength;
}

/** Sets the scheduler's timesteps and begins it where `strength` says; the timesteps to run. */
export function startAtStrength(op: string, scheduler: Scheduler, steps: number, strength: number): { timesteps: number[]; beginIndex: number } {
  scheduler.setTimesteps(steps);
  const tail = img2imgTimesteps(scheduler.timesteps, steps, strength, scheduler.order);
  if (tail.timesteps.length === 0)
    throw new RangeError(`${op}: strength ${strength} with ${steps} steps leaves no step to run (strength·steps must be at least 1)`);
  scheduler.setBeginIndex(tail.beginIndex);
  return tail;
}

/** diffusers' get_timesteps: the tail of the schedule that strength keeps, and where it starts. */
export function img2imgTimesteps(timesteps: readonly number[], steps: number, strength: number, order: number): { timesteps: number[]; beginIndex: number } {
  const initTimestep = Math.min(Math.trunc(steps * strength), steps);
  const tStart = Math.max(steps - initTimestep, 0);
  return { timesteps: timesteps.slice(tStart * order), beginIndex: tStart * order };
}

/** A denoisingStart / denoisingEnd option: a fraction in (0, 1), or null when absent. */
export function checkDenoisingFraction(op: string, name: string, v: unknown): number | null {
  if (v === undefined) return null;
  if (typeof v !== "number" || !(v > 0 && v < 1)) throw new RangeError(`${op}: ${name} must be a number in (0, 1), got ${String(v)}`);
  return v;
}

/** diffusers' discrete_timestep_cutoff: the timestep where a fraction of the training schedule is done. */
function cutoff(fraction: number, trainSteps: number): number {
  return Math.round(trainSteps - fraction * trainSteps);
}

/** SDXL's denoising_end: the leading timesteps at or above the cutoff (the rest is left to another model). */
export function timestepsUntil(timesteps: readonly number[], end: number, trainSteps: number): number[] {
  const c = cutoff(end, trainSteps);
  return timesteps.slice(0, timesteps.filter((t) => t >= c).length);
}

/**
 * SDXL img2img's denoising_start: sets the scheduler's timesteps and begins it at the first one
 * below the cutoff (for a second-order method an odd count, so that a step starts there); the
 * latents are taken as already noised to that point.
 */
export function startAtDenoisingStart(op: string, scheduler: Scheduler, steps: number, start: number, trainSteps: number): { timesteps: number[]; beginIndex: number } {
  scheduler.setTimesteps(steps);
  const all = scheduler.timesteps, c = cutoff(start, trainSteps);
  let n = all.filter((t) => t < c).length;
  if (scheduler.order === 2 && n % 2 === 0 && n > 0) n += 1;
  if (n === 0) throw new RangeError(`${op}: denoisingStart ${start} with ${steps} steps leaves no step to run`);
  const beginIndex = all.length - n;
  scheduler.setBeginIndex(beginIndex);
  return { timesteps: all.slice(beginIndex), beginIndex };
}

/** [1, latent channels, H/f, W/f]: one posterior sample of a W x H image. */
export function posteriorShape(pipe: StableDiffusionPipeline, W: number, H: number): number[] {
  const f = pipe.vaeScaleFactor;
  return [1, pipe.vae.config.latentChannels, H / f, W / f];
}

/**
 * Encodes NCHW pixels [1,3,H,W] in [-1, 1] once and returns scaling_factor · (mean + std·draw) for
 * each draw, concatenated on the batch axis (float32 on the pipeline's device). A draw repeated
 * (the same array) is computed once. With `tiling` the image is encoded in tiles (vae-tiling.ts).
 */
export async function encodePosteriorSamples(pipe: StableDiffusionPipeline, nchw: Float32Array, W: number, H: number, draws: Float32Array[], tiling?: VaeTilingOptions | null): Promise<Tensor> {
  const pixels = Tensor.fromArray(nchw, [1, 3, H, W], { device: pipe.device, dtype: pipe.vaeDtype });
  let post: { mean: Tensor; logvar: Tensor } | null = null;
  try {
    post = tiling ? await tiledEncode(pipe.vae, pixels, tiling) : pipe.vae.encode(pixels);
    const { mean: m, logvar: lv } = post;
    return tidy(() => {
      const mean = m.dtype === "float32" ? m : m.to(pipe.device, "float32");
      const logvar = lv.dtype === "float32" ? lv : lv.to(pipe.device, "float32");
      const std = ops.exp(ops.mul(logvar, 0.5));
      const one = [1, ...mean.shape.slice(1)];
      const made = new Map<Float32Array, Tensor>();
      const sample = (data: Float32Array) => {
        let t = made.get(data);
        if (!t) made.set(data, (t = ops.mul(ops.add(mean, ops.mul(std, Tensor.fromArray(data, one, { device: pipe.device }))), pipe.vae.config.scalingFactor)));
        return t;
      };
      const items = draws.map(sample);
      return items.length === 1 ? items[0] : ops.concat(items, 0);
    });
  } finally {
    post?.mean.dispose();
    post?.logvar.dispose();
    pixels.dispose();
  }
}
