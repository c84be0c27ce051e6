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
  GENERATE_KEYS, abortError, checkOutputType, checkSize, decodeLatents, denoise, disposeConditioning, drawNoise, encodeStage, imageParameters, latentResult, resolveCommon,
  throwIfAborted,
  type CommonGenerateOptions, type Conditioning, type GenerateResult,
} from "./text-to-image";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { checkDenoisingFraction, checkStrength, encodePosteriorSamples, posteriorShape, startAtDenoisingStart, startAtStrength } from "./partial-schedule";
import { disposeControls, resolveControls, type ResolvedControl } from "./controlnet";
import { enterSeamless, leaveSeamless } from "./tiling";
import type { VaeTilingOptions } from "../models/vae-tiling";

export { checkStrength, encodePosteriorSamples, img2imgTimesteps, posteriorShape, startAtStrength } from "./partial-schedule";

export interface Img2ImgOptions extends CommonGenerateOptions {
  /** A PNG/JPEG path, its bytes, or { width, height, data } 8-bit RGB pixels (or give initLatents instead). */
  image?: ImageInput;
  /**
   * Latents to start from instead of an image, [B, C, h, w] NCHW (B: 1 or one per output image), as
   * generate({ outputType: "latent" }) returns them: used as they are (not encoded; with
   * denoisingStart, not noised either, as diffusers' SDXL img2img takes latents).
   */
  initLatents?: Tensor | { data: Float32Array; shape: readonly number[] };
  /**
   * diffusers' denoising_start: begin at this fraction of the training schedule, taking the input as
   * already noised to that point (the second half of generate's denoisingEnd); strength is then unused.
   */
  denoisingStart?: number;
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

const IMG2IMG_KEYS: readonly string[] = [...GENERATE_KEYS.filter((k) => !["latents", "hires", "variation", "denoisingEnd"].includes(k)), "image", "strength", "initLatents", "denoisingStart"];

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
  let seamless = false;
  try {
    await enterSeamless(pipe, run.tiling, run.signal, () => abortError(op));
    seamless = true;
    const strength = checkStrength(op, opts.strength, pipe.isXL ? 0.3 : 0.8);  // diffusers' defaults: SD img2img 0.8, SDXL img2img 0.3
    const denoisingStart = checkDenoisingFraction(op, "denoisingStart", opts.denoisingStart);
    const outputType = checkOutputType(op, opts.outputType);
    if ((opts.image === undefined) === (opts.initLatents === undefined))
      throw new TypeError(`${op}: give image (a PNG/JPEG path, a Buffer, or { width, height, data }) or initLatents, one of them`);
    const f = pipe.vaeScaleFactor;
    const given = opts.initLatents === undefined ? null : initLatentsTensor(op, pipe, opts.initLatents, run.total);
    latents = given;
    const img = opts.image === undefined ? null : fitImage(op, await loadImage(opts.image, `${op}: image`), f, opts.width, opts.height);
    const [width, height] = img ? [img.width, img.height] : [given!.shape[3] * f, given!.shape[2] * f];
    if (given && (opts.width !== undefined || opts.height !== undefined)) throw new RangeError(`${op}: width and height come from initLatents`);
    const tail = denoisingStart === null ? startAtStrength(op, scheduler, run.steps, strength) : startAtDenoisingStart(op, scheduler, run.steps, denoisingStart, scheduler.config.numTrainTimesteps);
    throwIfAborted(run);

    // 2. encode prompt (+ negative prompt under CFG)
    const t0 = now();
    cond = await encodeStage(pipe, run, width, height, run.steps);
    const t1 = now();

    // 3. prepare latents: encode, sample the posterior, scale (or take initLatents), noise to the first
    // kept timestep (not with denoisingStart: the input is taken as noised to that point already)
    if (img) latents = await encodeInitLatents(pipe, img, run.total, run.generator, run.vaeTiling);
    if (denoisingStart === null) {
      const noise = Tensor.fromArray(drawNoise(latents!.shape, run.generator), latents!.shape, { device: pipe.device });
      try {
        const init = latents!;
        latents = scheduler.addNoise(init, noise, tail.timesteps[0]);
        init.dispose();
      } finally {
        noise.dispose();
      }
    }

    // 4. denoising loop with classifier-free guidance, over the kept timesteps (ControlNet if asked)
    control = await resolveControls(pipe, op, opts.controlnet, width, height, run.cfgOn ? 2 * run.total : run.total);
    const final = await denoise(pipe, run, { scheduler, timesteps: tail.timesteps, cond, control }, latents!);
    latents = final;
    const t2 = now();

    // 5. decode (or hand back the latents)
    if (outputType === "latent") return await latentResult(final, run, t1 - t0, t2 - t1);
    const extra: Record<string, number> = denoisingStart === null ? { "Denoising strength": strength } : { "Denoising start": denoisingStart };
    const { images } = await decodeLatents(pipe, final, imageParameters(pipe, run, width, height, extra), run.vaeTiling);
    const t3 = now();
    return { images, seeds: run.seeds, timings: { encode: t1 - t0, denoise: t2 - t1, decode: t3 - t2 } };
  } finally {
    if (seamless) leaveSeamless(pipe);
    disposeConditioning(cond);
    latents?.dispose();
    disposeControls(control);
    scheduler.dispose();
  }
}

/** initLatents as a float32 tensor of [total, C, h, w] on the pipeline's device (one given row is repeated). */
function initLatentsTensor(op: string, pipe: StableDiffusionPipeline, v: NonNullable<Img2ImgOptions["initLatents"]>, total: number): Tensor {
  const C = pipe.unet.config.outChannels;
  const isTensor = v instanceof Tensor;
  const shape = isTensor ? [...v.shape] : v && typeof v === "object" && Array.isArray(v.shape) ? [...v.shape] : null;
  if (!shape || shape.length !== 4 || shape[1] !== C || (shape[0] !== 1 && shape[0] !== total) || !(shape[2] >= 1) || !(shape[3] >= 1))
    throw new RangeError(`${op}: initLatents must be [1 or ${total}, ${C}, h, w] (a Tensor, or { data, shape } as generate returns it)${shape ? `, got [${shape.join(",")}]` : ""}`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (!isTensor && (!((v as { data: unknown }).data instanceof Float32Array) || (v as { data: Float32Array }).data.length !== n))
    throw new RangeError(`${op}: initLatents.data must be a Float32Array of ${n} values`);
  const one = isTensor ? v.to(pipe.device, "float32") : Tensor.fromArray((v as { data: Float32Array }).data, shape, { device: pipe.device });
  if (shape[0] === total) return one;
  try {
    return tidy(() => ops.concat(Array.from({ length: total }, () => one), 0));
  } finally {
    one.dispose();
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


