/**
 * Image to image (SDEdit, Meng et al. 2022): diffusers' StableDiffusionImg2ImgPipeline (0.27.2).
 * The init image is encoded with the VAE, noised to the timestep where the last strength·steps of
 * the schedule begin, and denoised over those steps; stages as in text-to-image.ts.
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { synchronize } from "../devices";
import { TorchGenerator } from "../random/torch-generator";
import type { NoiseSource, Scheduler } from "../schedulers";
import { centerCrop, imageToNchw, loadImage, resizeImage, type ImageInput, type RGBImage } from "./images";
import {
  GENERATE_KEYS, checkSize, decodeLatents, denoise, disposeConditioning, drawNoise, encodeStage, imageParameters, resolveCommon, throwIfAborted,
  type CommonGenerateOptions, type Conditioning, type GenerateResult,
} from "./text-to-image";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { checkStrength, encodePosteriorSamples, posteriorShape, startAtStrength } from "./partial-schedule";
import { disposeControls, resolveControls, type ResolvedControl } from "./controlnet";
import type { VaeTilingOptions } from "../models/vae-tiling";

export { checkStrength, encodePosteriorSamples, img2imgTimesteps, posteriorShape, startAtStrength } from "./partial-schedule";

export interface Img2ImgOptions extends CommonGenerateOptions {
  /** A PNG/JPEG path, its bytes, or { width, height, data } 8-bit RGB pixels. */
  image: ImageInput;
  /**
   * How much to change the image, in (0, 1]: the last floor(strength·steps) steps of the schedule
   * run, starting from the image noised to that point. 1 ignores the image. Default 0.8 (SDXL: 0.3, as diffusers).
   */
  strength?: number;
  /**
   * Output size (multiples of the VAE scale factor); the image is resized to it. Default: the
   * image's size rounded down to a multiple of the scale factor by cropping the centre.
   */
  width?: number;
  height?: number;
}

const IMG2IMG_KEYS: readonly string[] = [...GENERATE_KEYS.filter((k) => k !== "latents" && k !== "hires"), "image", "strength"];

const now = (): number => performance.now() / 1000;

/** The init image at the output size: cropped when only rounding, resized when a size is asked for. */
export function fitImage(op: string, img: RGBImage, f: number, width?: number, height?: number): RGBImage {
  if (img.width < f || img.height < f) throw new RangeError(`${op}: the image (${img.width}x${img.height}) is smaller than the VAE scale factor ${f}`);
  const W = width === undefined ? img.width - (img.width % f) : checkSize(op, "width", width, f);
  const H = height === undefined ? img.height - (img.height % f) : checkSize(op, "height", height, f);
  if (width === undefined && height === undefined) return centerCrop(img, W, H);
  return resizeImage(img, W, H);
}




export async function imageToImage(pipe: StableDiffusionPipeline, opts: Img2ImgOptions): Promise<GenerateResult> {
  pipe.assertLive("img2img");
  const op = "img2img";
  pipe.assertPlainUnet(op);

  // 1. defaults and validation
  const run = resolveCommon(pipe, opts, op, IMG2IMG_KEYS);
  const { scheduler } = run;
  let cond: Conditioning | null = null;
  let latents: Tensor | null = null;
  let control: ResolvedControl[] = [];
  try {
    const strength = checkStrength(op, opts.strength, pipe.isXL ? 0.3 : 0.8);  // diffusers' defaults: SD img2img 0.8, SDXL img2img 0.3
    if (opts.image === undefined) throw new TypeError(`${op}: image is required (a PNG/JPEG path, a Buffer, or { width, height, data })`);
    const f = pipe.vaeScaleFactor;
    const img = fitImage(op, await loadImage(opts.image, `${op}: image`), f, opts.width, opts.height);
    const { width, height } = img;
    const tail = startAtStrength(op, scheduler, run.steps, strength);
    throwIfAborted(run);

    // 2. encode prompt (+ negative prompt under CFG)
    const t0 = now();
    cond = await encodeStage(pipe, run, width, height);
    const t1 = now();

    // 3. prepare latents: encode, sample the posterior, scale, noise to the first kept timestep
    latents = await encodeInitLatents(pipe, img, run.total, run.generator, run.vaeTiling);
    const noise = Tensor.fromArray(drawNoise(latents.shape, run.generator), latents.shape, { device: pipe.device });
    try {
      const init = latents;
      latents = scheduler.addNoise(init, noise, tail.timesteps[0]);
      init.dispose();
    } finally {
      noise.dispose();
    }

    // 4. denoising loop with classifier-free guidance, over the kept timesteps (ControlNet if asked)
    control = await resolveControls(pipe, op, opts.controlnet, width, height, run.cfgOn ? 2 * run.total : run.total);
    const final = await denoise(pipe, run, { scheduler, timesteps: tail.timesteps, cond, control }, latents);
    latents = final;
    const t2 = now();

    // 5. decode
    const { images } = await decodeLatents(pipe, final, imageParameters(pipe, run, width, height, { "Denoising strength": strength }), run.vaeTiling);
    const t3 = now();
    return { images, seeds: run.seeds, timings: { encode: t1 - t0, denoise: t2 - t1, decode: t3 - t2 } };
  } finally {
    disposeConditioning(cond);
    latents?.dispose();
    disposeControls(control);
    scheduler.dispose();
  }
}

/**
 * scaling_factor · (mean + std·noise) of the VAE posterior of the image, for `total` images
 * ([total, 4, H/f, W/f] float32). The image is encoded once; with per-image generators each image
 * draws its own posterior noise (diffusers' list-of-generators path), with one noise source one
 * draw is shared by the whole batch (diffusers' single-generator path).
 */
export async function encodeInitLatents(pipe: StableDiffusionPipeline, img: RGBImage, total: number, generator: NoiseSource | TorchGenerator[], tiling?: VaeTilingOptions | null): Promise<Tensor> {
  const one = posteriorShape(pipe, img.width, img.height);
  const draws = Array.isArray(generator)
    ? generator.map((g) => drawNoise(one, [g]))
    : Array<Float32Array>(total).fill(drawNoise(one, generator));
  return encodePosteriorSamples(pipe, imageToNchw(img), img.width, img.height, draws, tiling);
}


