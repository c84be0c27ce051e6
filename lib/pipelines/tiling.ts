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

// Generations on one pipeline interleave at every denoising step, and the padding is the
// pipeline's state: a run waits until the runs in flight want the same padding as it does (or
// none are left), and the last one out restores zero padding. Runs queue in arrival order once
// one is waiting, so a stream of one kind cannot starve the other.
interface SeamlessGate { on: boolean; active: number; waiting: (() => void)[] }
const gates = new WeakMap<StableDiffusionPipeline, SeamlessGate>();

/** Waits for this run's turn and sets the padding it wants; pair with leaveSeamless. */
export async function enterSeamless(pipe: StableDiffusionPipeline, on: boolean, signal: AbortSignal | undefined, aborted: () => Error): Promise<void> {
  let g = gates.get(pipe);
  if (!g) gates.set(pipe, (g = { on: false, active: 0, waiting: [] }));
  const gate = g;
  let queued = gate.waiting.length > 0;
  while (gate.active > 0 && (gate.on !== on || queued)) {
    if (signal?.aborted) throw aborted();
    await new Promise<void>((resolve) => {
      const wake = () => { signal?.removeEventListener("abort", wake); resolve(); };
      gate.waiting.push(wake);
      signal?.addEventListener("abort", wake, { once: true });
    });
    queued = false;
  }
  if (signal?.aborted) throw aborted();
  if (gate.active === 0) {
    setSeamless(pipe, on);
    gate.on = on;
  }
  gate.active++;
}

/** Ends a run begun with enterSeamless: the last one restores zero padding and wakes the waiting. */
export function leaveSeamless(pipe: StableDiffusionPipeline): void {
  const gate = gates.get(pipe);
  if (!gate || gate.active === 0) throw new Error("leaveSeamless without enterSeamless");
  if (--gate.active > 0) return;
  setSeamless(pipe, false);
  gate.on = false;
  for (const wake of gate.waiting.splice(0)) wake();
}
