/**
 * ControlNet in the pipelines (diffusers' StableDiffusionControlNetPipeline, 0.27.2): the control
 * option of generate()/img2img() (load-controlnet.ts loads the model): the control
 * image resized to the output size, in [0, 1] (no normalisation), one per image and again for
 * CFG's negative rows; at step i the ControlNet runs when start <= i/N and (i+1)/N <= end, and its
 * residuals, times `scale`, go into the U-Net's skips and mid block.
 */
import * as ops from "../ops";
import { Tensor } from "../tensor";
import { ControlNetModel } from "../models/controlnet";
import type { ControlResiduals } from "../models/unet-2d-condition";
import { loadImage, resizeImage, type ImageInput } from "./images";
import type { StableDiffusionPipeline } from "./stable-diffusion";

/** The control option of generate() and img2img(). */
export interface ControlOptions {
  /** A ControlNet from loadControlNet (same device and dtype as the pipeline). */
  model: ControlNetModel;
  /** The control image (edges, depth, pose...): a path, bytes or RGB pixels; resized to the output size. */
  image: ImageInput;
  /** diffusers' controlnet_conditioning_scale. Default 1. */
  scale?: number;
  /** Fractions of the steps between which the ControlNet acts (control_guidance_start / _end). Default 0 and 1. */
  start?: number;
  end?: number;
}

/** What the denoising loop needs: the net, the control batch (CFG rows included) and when to apply it. */
export interface ResolvedControl {
  net: ControlNetModel;
  image: Tensor;
  scale: number;
  start: number;
  end: number;
}

/** Whether the ControlNet acts at step i of n (diffusers' controlnet_keep). */
export function controlActive(c: Pick<ResolvedControl, "start" | "end">, i: number, n: number): boolean {
  return !(i / n < c.start || (i + 1) / n > c.end);
}

/**
 * Checks the option (one ControlOptions, or several: diffusers' MultiControlNetModel, whose
 * residuals add up) and prepares each control batch for `rows` U-Net rows. The caller frees them
 * with disposeControls.
 */
export async function resolveControls(pipe: StableDiffusionPipeline, op: string, v: unknown, width: number, height: number, rows: number): Promise<ResolvedControl[]> {
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  if (list.length === 0) throw new TypeError(`${op}: controlnet must be one { model, image, ... } or a non-empty list of them`);
  const out: ResolvedControl[] = [];
  try {
    for (const [i, o] of list.entries()) out.push(await resolveOne(pipe, list.length > 1 ? `${op}: controlnet[${i}]` : op, o, width, height, rows));
    return out;
  } catch (e) {
    disposeControls(out);
    throw e;
  }
}

export function disposeControls(cs: readonly ResolvedControl[]): void {
  for (const c of cs) c.image.dispose();
}

/** The residuals of the ControlNets active at step i of n, added up (null when none acts). */
export function controlResidualsAt(cs: readonly ResolvedControl[], i: number, n: number, run: (c: ResolvedControl) => ControlResiduals): ControlResiduals | null {
  const parts = cs.filter((c) => controlActive(c, i, n)).map(run);
  if (parts.length <= 1) return parts[0] ?? null;
  return { down: parts[0].down.map((_, k) => parts.slice(1).reduce((acc, p) => ops.add(acc, p.down[k]), parts[0].down[k])),
    mid: parts.slice(1).reduce((acc, p) => ops.add(acc, p.mid), parts[0].mid) };
}

async function resolveOne(pipe: StableDiffusionPipeline, op: string, v: unknown, width: number, height: number, rows: number): Promise<ResolvedControl> {
  const o = v as ControlOptions;
  if (!o || typeof o !== "object" || !(o.model instanceof ControlNetModel))
    throw new TypeError(`${op}: controlnet must be { model: <loadControlNet(...)>, image, scale?, start?, end? }`);
  if (o.model.namedParameters().length === 0) throw new TypeError(`${op}: the ControlNet is disposed (or was never loaded)`);
  // the ControlNet reads the latents alone (an inpainting U-Net's extra channels are its own)
  if (o.model.config.inChannels !== pipe.vae.config.latentChannels || pipe.unet.config.blockOutChannels.join() !== o.model.config.blockOutChannels.join())
    throw new RangeError(`${op}: this ControlNet (in_channels ${o.model.config.inChannels}, block_out_channels ${o.model.config.blockOutChannels.join("/")}) ` +
      `does not fit the model (${pipe.vae.config.latentChannels} latent channels, block_out_channels ${pipe.unet.config.blockOutChannels.join("/")})`);
  const scale = o.scale ?? 1, start = o.start ?? 0, end = o.end ?? 1;
  if (typeof scale !== "number" || !Number.isFinite(scale)) throw new RangeError(`${op}: controlnet.scale must be a finite number`);
  if (typeof start !== "number" || typeof end !== "number" || !(start >= 0 && start < end && end <= 1))
    throw new RangeError(`${op}: controlnet.start and .end must satisfy 0 <= start < end <= 1, got ${String(start)} and ${String(end)}`);
  if (o.model.imageScale !== pipe.vaeScaleFactor)
    throw new RangeError(`${op}: the ControlNet expects images ${o.model.imageScale}x its latents, the VAE makes them ${pipe.vaeScaleFactor}x`);
  const img = resizeImage(await loadImage(o.image, `${op}: controlnet.image`), width, height);
  const hw = width * height, one = new Float32Array(3 * hw);
  for (let i = 0; i < hw; i++) for (let c = 0; c < 3; c++) one[c * hw + i] = Math.fround(img.data[3 * i + c] / 255);
  const all = new Float32Array(rows * one.length);
  for (let r = 0; r < rows; r++) all.set(one, r * one.length);
  const firstParam = o.model.namedParameters()[0][1];
  const image = Tensor.fromArray(all, [rows, 3, height, width], { device: pipe.device, dtype: firstParam.dtype });
  return { net: o.model, image, scale, start, end };
}
