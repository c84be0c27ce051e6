/**
 * Inpainting: diffusers' StableDiffusionInpaintPipeline (0.27.2). The masked area (white in the
 * mask) is repainted towards the prompt; stages as in text-to-image.ts.
 *
 * Two kinds of U-Net:
 *  - an inpainting U-Net (9 input channels, e.g. sd-v1-5-inpainting) gets, after the scaled
 *    latents, the latent-size mask and the latents of the image with the masked area blanked;
 *  - a plain 4-channel U-Net repaints by blending: after every step the unmasked area is replaced
 *    by the image's latents noised to the next timestep (the original latents after the last).
 * Random draws follow diffusers' order: the image's posterior sample (when the start or the blend
 * needs the image latents), the starting noise, then the masked image's posterior sample. With
 * per-image seeds the two posterior samples come from image 0's generator, as there (the image is
 * encoded as a batch of one).
 */
import * as ops from "../ops";
import { Tensor, tidy, keep } from "../tensor";
import { synchronize } from "../devices";
import { TorchGenerator } from "../random/torch-generator";
import type { NoiseSource } from "../schedulers";
import { GeneratedImage, imageToNchw, loadImage, type ImageInput } from "./images";
import { fitMask, latentMask, loadMask, maskCondition, maskedImage, pasteUnmasked, type MaskInput } from "./mask";
import { fitImage } from "./image-to-image";
import { disposeControls, resolveControls, type ResolvedControl } from "./controlnet";
import { checkStrength, encodePosteriorSamples, posteriorShape, startAtStrength } from "./partial-schedule";
import { enterSeamless, leaveSeamless } from "./tiling";
import {
  GENERATE_KEYS, abortError, checkOutputType, decodeLatents, denoise, latentResult, disposeConditioning, drawNoise, encodeStage, imageParameters, latentsFromOption, resolveCommon, throwIfAborted,
  type CommonGenerateOptions, type Conditioning, type GenerateResult,
} from "./text-to-image";
import type { StableDiffusionPipeline } from "./stable-diffusion";

export interface InpaintOptions extends CommonGenerateOptions {
  /** The image to repaint: a PNG/JPEG path, its bytes, or { width, height, data } 8-bit RGB pixels. */
  image: ImageInput;
  /**
   * White (>= 128) = repaint, black = keep: any image input (converted to grey as PIL's "L"), or
   * { width, height, data } with one byte per pixel. A mask of another size than the image is resized.
   */
  mask: MaskInput;
  /**
   * How much of the schedule runs, in (0, 1]: below 1 the masked area starts from the image
   * noised to that point instead of pure noise. Default 1.
   */
  strength?: number;
  /** Output size (multiples of the VAE scale factor), as img2img: default the image's size, centre-cropped to a multiple. */
  width?: number;
  height?: number;
  /**
   * Starting noise [prompts·numImages, 4, h, w] (unscaled). As in diffusers, given latents are the
   * start (times init_noise_sigma) whatever the strength, and the noise of the 4-channel blend.
   */
  latents?: Float32Array | Tensor;
  /**
   * Paste the original pixels back outside the mask (soft edges blend by the mask's grey level).
   * diffusers returns the decoded image as is (the VAE round trip changes the kept area slightly). Default false.
   */
  keepUnmasked?: boolean;
}

const INPAINT_KEYS: readonly string[] = [...GENERATE_KEYS.filter((k) => !["hires", "variation", "denoisingEnd", "tiling"].includes(k)), "image", "mask", "strength", "keepUnmasked"];

const now = (): number => performance.now() / 1000;

/** The kind of inpainting a U-Net does: "unet9" (mask + masked-image latents as input) or "blend". */
export function inpaintKind(pipe: StableDiffusionPipeline): "unet9" | "blend" {
  const c = pipe.vae.config.latentChannels, n = pipe.unet.config.inChannels;
  if (n === 2 * c + 1) return "unet9";
  if (n === c) return "blend";
  throw new Error(`inpaint: the U-Net takes ${n} input channels; inpainting needs ${c} (blending) or ${2 * c + 1} (an inpainting U-Net)`);
}

/** One posterior draw for the image encoded as a batch of one: image 0's generator, or the caller's source. */
const firstGenerator = (g: NoiseSource | TorchGenerator[]): NoiseSource | TorchGenerator[] => (Array.isArray(g) ? [g[0]] : g);

export async function inpaint(pipe: StableDiffusionPipeline, opts: InpaintOptions): Promise<GenerateResult> {
  pipe.assertLive("inpaint");
  const op = "inpaint";

  // 1. defaults and validation
  const run = resolveCommon(pipe, opts, op, INPAINT_KEYS);
  const { scheduler } = run;
  const held: Tensor[] = [];
  const hold = <T extends Tensor>(t: T): T => (held.push(t), t);
  let cond: Conditioning | null = null;
  let latents: Tensor | null = null;
  let control: ResolvedControl[] = [];
  let seamless = false;
  try {
    await enterSeamless(pipe, false, run.signal, () => abortError(op));  // zero padding, whatever runs beside it
    seamless = true;
    const kind = inpaintKind(pipe);
    const strength = checkStrength(op, opts.strength, 1);
    if (opts.keepUnmasked !== undefined && typeof opts.keepUnmasked !== "boolean") throw new TypeError(`${op}: keepUnmasked must be a boolean`);
    const outputType = checkOutputType(op, opts.outputType);
    if (outputType === "latent" && opts.keepUnmasked) throw new RangeError(`${op}: keepUnmasked pastes pixels; it does not combine with outputType "latent"`);
    if (opts.image === undefined) throw new TypeError(`${op}: image is required (a PNG/JPEG path, a Buffer, or { width, height, data })`);
    if (opts.mask === undefined) throw new TypeError(`${op}: mask is required (white = repaint): an image, or { width, height, data } with one byte per pixel`);
    const f = pipe.vaeScaleFactor;
    const source = await loadImage(opts.image, `${op}: image`);
    const img = fitImage(op, source, f, opts.width, opts.height);
    const { width, height } = img;
    const cropped = opts.width === undefined && opts.height === undefined;
    const mask = fitMask(await loadMask(opts.mask, `${op}: mask`), source, width, height, cropped);
    const h = height / f, w = width / f;
    const shape = [run.total, pipe.vae.config.latentChannels, h, w];
    const given = opts.latents === undefined ? null : hold(latentsFromOption(op, opts.latents, shape, pipe.device));
    const tail = startAtStrength(op, scheduler, run.steps, strength);
    throwIfAborted(run);

    // 2. encode prompt (+ negative prompt under CFG)
    const t0 = now();
    cond = await encodeStage(pipe, run, width, height, run.steps);
    const t1 = now();

    // 3. prepare latents (diffusers' prepare_latents, then prepare_mask_latents)
    const init = imageToNchw(img);
    const one = posteriorShape(pipe, width, height);
    const fullStrength = strength === 1;
    const needImageLatents = kind === "blend" || (given === null && !fullStrength);
    const imageLatents = needImageLatents
      ? hold(await encodePosteriorSamples(pipe, init, width, height, Array<Float32Array>(run.total).fill(drawNoise(one, firstGenerator(run.generator))), run.vaeTiling))
      : null;
    const noise = given ?? hold(Tensor.fromArray(drawNoise(shape, run.generator), shape, { device: pipe.device }));
    latents = given !== null || fullStrength
      ? ops.mul(noise, scheduler.initNoiseSigma)
      : scheduler.addNoise(imageLatents!, noise, tail.timesteps[0]);
    const binary = maskCondition(mask);
    const maskedDraw = drawNoise(one, firstGenerator(run.generator));  // drawn for the blend too, as diffusers does
    const lmask = latentMask(binary, height, width, h, w);
    let conditioning: Tensor | undefined;
    let afterStep: ((x: Tensor, i: number) => Tensor) | undefined;
    if (kind === "unet9") {
      const mil = await encodePosteriorSamples(pipe, maskedImage(init, binary), width, height, [maskedDraw], run.vaeTiling);
      conditioning = hold(keep(tidy(() => {
        const m = Tensor.fromArray(lmask, [1, 1, h, w], { device: pipe.device });
        const one9 = ops.concat([m, mil], 1);
        const rows = run.cfgOn ? 2 * run.total : run.total;
        return rows === 1 ? one9 : ops.concat(Array<Tensor>(rows).fill(one9), 0);
      })));
      mil.dispose();
    } else {
      // keep the image outside the mask: after step i, the image latents noised to the next timestep
      const m = hold(Tensor.fromArray(lmask, [1, 1, h, w], { device: pipe.device }));
      const keepMask = hold(Tensor.fromArray(lmask.map((v) => 1 - v), [1, 1, h, w], { device: pipe.device }));
      const ts = tail.timesteps;
      afterStep = (x, i) => {
        const proper = i < ts.length - 1 ? scheduler.addNoise(imageLatents!, noise, ts[i + 1]) : imageLatents!;
        return ops.add(ops.mul(keepMask, proper), ops.mul(m, x));
      };
    }

    // 4. denoising loop with classifier-free guidance, over the kept timesteps (ControlNet if asked:
    // diffusers' StableDiffusionControlNetInpaintPipeline; an inpaint ControlNet wants its own control image)
    control = await resolveControls(pipe, op, opts.controlnet, width, height, run.cfgOn ? 2 * run.total : run.total);
    const final = await denoise(pipe, run, { scheduler, timesteps: tail.timesteps, cond, conditioning, afterStep, control }, latents);
    latents = final;
    const t2 = now();

    // 5. decode (and paste the kept pixels back when asked), or hand back the latents
    if (outputType === "latent") return await latentResult(final, run, t1 - t0, t2 - t1);
    const params = imageParameters(pipe, run, width, height, fullStrength ? {} : { "Denoising strength": strength });
    let { images } = await decodeLatents(pipe, final, params, run.vaeTiling);
    if (opts.keepUnmasked) images = images.map((g) => new GeneratedImage(g.width, g.height, pasteUnmasked(g.data, img, mask), g.parameters));
    const t3 = now();
    return { images, seeds: run.seeds, timings: { encode: t1 - t0, denoise: t2 - t1, decode: t3 - t2 } };
  } finally {
    if (seamless) leaveSeamless(pipe);
    disposeConditioning(cond);
    latents?.dispose();
    for (const t of held) t.dispose();
    disposeControls(control);
    scheduler.dispose();
  }
}
