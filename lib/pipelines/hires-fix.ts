/**
 * "Hires fix" (as the A1111 web UI names it): draw at the model's own size, upscale, then redraw
 * the larger picture with img2img's partial schedule, so a model trained at 512 px composes at 512
 * and adds detail at 1024 instead of repeating itself across a large canvas. The upscale is of
 * the latents (bilinear, as torch's F.interpolate with align_corners=False: A1111's "Latent") or
 * of the decoded image (decode, resize, encode again: "image").
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { imageToNchw, resizeImage, type RGBImage } from "./images";
import { checkStrength, encodePosteriorSamples, posteriorShape, startAtStrength } from "./partial-schedule";
import { drawNoise, makeScheduler, type ResolvedRun } from "./text-to-image";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import type { Scheduler } from "../schedulers";

export interface HiresOptions {
  /** Size factor of the second pass (the result is rounded to multiples of the VAE scale factor), in (1, 4]. Default 2. */
  scale?: number;
  /** How much the second pass redraws (img2img's strength), in (0, 1]. Default 0.5. */
  strength?: number;
  /** Steps of the second pass's schedule, of which strength·steps run. Default: the first pass's. */
  steps?: number;
  /** "latent" (bilinear latents; default) or "image" (decode, resize, encode). */
  upscale?: "latent" | "image";
}

export interface ResolvedHires {
  scale: number;
  strength: number;
  steps: number;
  upscale: "latent" | "image";
}

export function resolveHires(op: string, v: unknown, steps: number): ResolvedHires | null {
  if (v === undefined || v === false) return null;
  if (v !== true && (v === null || typeof v !== "object")) throw new TypeError(`${op}: hires must be true or { scale, strength, steps, upscale }`);
  const o = v === true ? {} : (v as HiresOptions);
  const scale = o.scale ?? 2;
  if (typeof scale !== "number" || !(scale > 1 && scale <= 4)) throw new RangeError(`${op}: hires.scale must be a number in (1, 4], got ${String(scale)}`);
  const strength = checkStrength(`${op}: hires`, o.strength, 0.5);
  const s2 = o.steps ?? steps;
  if (!Number.isInteger(s2) || s2 < 1 || s2 > 1000) throw new RangeError(`${op}: hires.steps must be an integer in [1, 1000], got ${String(s2)}`);
  if (Math.trunc(s2 * strength) < 1)
    throw new RangeError(`${op}: hires strength ${strength} with ${s2} steps leaves no step to run (strength·steps must be at least 1)`);
  const upscale = o.upscale ?? "latent";
  if (upscale !== "latent" && upscale !== "image") throw new RangeError(`${op}: hires.upscale must be "latent" or "image", got ${JSON.stringify(upscale)}`);
  return { scale, strength, steps: s2, upscale };
}

/** The second pass's pixel size: scale x, rounded to a multiple of f. */
export function hiresSize(width: number, height: number, scale: number, f: number): { width: number; height: number } {
  return { width: Math.max(f, Math.round((width * scale) / f) * f), height: Math.max(f, Math.round((height * scale) / f) * f) };
}

/** Bilinear resize of [B, C, h, w] float32 (torch F.interpolate, mode "bilinear", align_corners=False, no antialias). */
export function bilinearResize(x: Float32Array, shape: readonly number[], H: number, W: number): Float32Array {
  const [B, C, h, w] = shape;
  const out = new Float32Array(B * C * H * W);
  const axis = (n: number, N: number) => Array.from({ length: N }, (_, o) => {
    const src = Math.max(0, ((o + 0.5) * n) / N - 0.5);
    const i0 = Math.min(Math.floor(src), n - 1), i1 = Math.min(i0 + 1, n - 1);
    return { i0, i1, t: Math.fround(src - i0) };
  });
  const ys = axis(h, H), xs = axis(w, W);
  const f = Math.fround;
  for (let p = 0; p < B * C; p++) {
    const base = p * h * w, ob = p * H * W;
    for (let Y = 0; Y < H; Y++) {
      const { i0: y0, i1: y1, t: ty } = ys[Y];
      for (let X = 0; X < W; X++) {
        const { i0: x0, i1: x1, t: tx } = xs[X];
        const top = f(f(x[base + y0 * w + x0] * f(1 - tx)) + f(x[base + y0 * w + x1] * tx));
        const bot = f(f(x[base + y1 * w + x0] * f(1 - tx)) + f(x[base + y1 * w + x1] * tx));
        out[ob + Y * W + X] = f(f(top * f(1 - ty)) + f(bot * ty));
      }
    }
  }
  return out;
}

/**
 * The second pass's starting point: the first pass's final latents (or its images) upscaled to
 * W x H, noised to where `strength` starts a fresh scheduler. Returns that scheduler (the caller
 * disposes it), its timesteps and the latents (owned by the caller).
 */
export async function hiresStart(pipe: StableDiffusionPipeline, run: ResolvedRun, h: ResolvedHires, first: Tensor, images: RGBImage[] | null,
  W: number, H: number): Promise<{ scheduler: Scheduler; timesteps: number[]; latents: Tensor }> {
  const f = pipe.vaeScaleFactor;
  let up: Tensor;
  if (h.upscale === "latent") {
    const data = bilinearResize(await first.toFloat32Array(), first.shape, H / f, W / f);
    up = Tensor.fromArray(data, [first.shape[0], first.shape[1], H / f, W / f], { device: pipe.device });
  } else {
    // each image encoded on its own, with its own posterior draw (as img2img's list-of-generators path)
    const gens = Array.isArray(run.generator) ? run.generator : null;
    const parts: Tensor[] = [];
    for (const [k, img] of images!.entries()) {
      const draw = drawNoise(posteriorShape(pipe, W, H), gens ? [gens[k]] : run.generator);
      parts.push(await encodePosteriorSamples(pipe, imageToNchw(resizeImage(img, W, H)), W, H, [draw], run.vaeTiling));
    }
    up = parts.length === 1 ? parts[0] : tidy(() => ops.concat(parts, 0));
    if (parts.length > 1) parts.forEach((p) => p.dispose());
  }
  let scheduler: Scheduler | null = null;
  try {
    scheduler = makeScheduler(pipe, run.op, run.sampler, run.schedulerConfig).scheduler;
    const tail = startAtStrength(`${run.op}: hires`, scheduler, h.steps, h.strength);
    const noise = Tensor.fromArray(drawNoise(up.shape, run.generator), up.shape, { device: pipe.device });
    try {
      return { scheduler, timesteps: tail.timesteps, latents: scheduler.addNoise(up, noise, tail.timesteps[0]) };
    } finally {
      noise.dispose();
    }
  } catch (e) {
    scheduler?.dispose();
    throw e;
  } finally {
    up.dispose();
  }
}
