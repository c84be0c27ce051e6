/**
 * Seamless tiling (A1111's "Tiling"): every convolution of the U-Net and the VAE pads by wrapping
 * around instead of with zeros, so the picture continues across its left/right and top/bottom
 * edges and the image tiles without seams. On for one generation; the U-Net's captured CUDA
 * graphs are released when it changes (they hold the other padding).
 */
import { Conv2d } from "../nn/layers";
import { releaseUNetGraphs } from "../models/unet-graph";
import type { StableDiffusionPipeline } from "./stable-diffusion";

export function resolveTiling(op: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== "boolean") throw new TypeError(`${op}: tiling must be a boolean`);
  return v;
}

/** Turns wrap-around padding on or off in the pipeline's U-Net and VAE. */
export function setSeamless(pipe: StableDiffusionPipeline, on: boolean): void {
  const convs = [...pipe.unet.modules(), ...pipe.vae.modules()].filter((m): m is Conv2d => m instanceof Conv2d);
  if (convs.every((c) => c.circular === on)) return;
  releaseUNetGraphs(pipe.unet);
  for (const c of convs) c.circular = on;
}
