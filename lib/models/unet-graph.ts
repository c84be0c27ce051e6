// The denoising step's U-Net call as a replayed CUDA graph (lib/graph.ts).
//
// A U-Net forward is ~1000 ops whose GPU time at 512x512 is a few milliseconds; run eagerly, the
// host side (JS, N-API, queue, launch) is the bottleneck. Captured once per (model, shapes,
// dtypes), a step becomes: copy sample / timestep / context into the graph's static buffers,
// one graph launch, copy the float32 output out. The timestep goes in as a device tensor (a
// host value would be frozen into the graph). Numerics are those of the eager forward: the same
// kernels on the same shapes, the timestep rounded to float32 either way.
import { captureGraph, type CapturedGraph } from "../graph";
import { Tensor } from "../tensor";
import type { AddedCond, UNet2DConditionModel } from "./unet-2d-condition";

interface Entry {
  graph: CapturedGraph | null;
  /** Eager calls so far (the first one warms up kernel choices and one-time device probes). */
  eager: number;
  failed: boolean;
}

const graphs = new WeakMap<UNet2DConditionModel, Map<string, Entry>>();

/** Whether steps on `device` use graphs: CUDA only, unless DIFFUSEKIT_CUDA_GRAPHS=0. */
export function unetGraphsEnabled(device: string): boolean {
  return device.startsWith("cuda") && process.env.DIFFUSEKIT_CUDA_GRAPHS !== "0";
}

/**
 * unet.forward(sample, timestep, context) for a denoising step. On CUDA the second call with the
 * same shapes captures a graph and later calls replay it (the result is then float32); when the
 * capture fails the step runs eagerly from then on, and the reason is kept in lastGraphError().
 * Elsewhere (and as the fallback) it is exactly unet.forward().
 */
export function unetStep(unet: UNet2DConditionModel, sample: Tensor, timestep: number, context: Tensor, added?: AddedCond): Tensor {
  const eager = () => unet.forward(sample, timestep, context, added ? { addedCond: added } : {});
  if (!unetGraphsEnabled(sample.device) || !Number.isFinite(timestep)) return eager();
  let byKey = graphs.get(unet);
  if (!byKey) graphs.set(unet, (byKey = new Map()));
  const sig = (t: Tensor) => `${t.dtype}|${t.shape.join(",")}`;
  const key = [sample.device, sig(sample), sig(context), ...(added ? [sig(added.textEmbeds), sig(added.timeIds)] : [])].join("|");
  let e = byKey.get(key);
  if (!e) byKey.set(key, (e = { graph: null, eager: 0, failed: false }));
  if (e.failed || (!e.graph && e.eager < 1)) {
    e.eager++;
    return eager();
  }
  const t = Tensor.fromArray(new Float32Array([timestep]), [1], { device: sample.device });
  // the added conditioning must live on the graph's device too (the size ids are made on the host)
  const inputs = [sample, t, context, ...(added ? [added.textEmbeds, added.timeIds] : [])];
  try {
    if (!e.graph) {
      try {
        e.graph = captureGraph(sample.device, inputs, (x, tt, c, te, ti) => {
          const eps = unet.forward(x, tt, c, te ? { addedCond: { textEmbeds: te, timeIds: ti } } : {});
          return eps.dtype === "float32" ? eps : eps.to(eps.device, "float32");
        });
      } catch (err) {
        e.failed = true;
        lastError = (err as Error).message ?? String(err);
        return eager();
      }
    }
    return e.graph.run(inputs)[0];
  } finally {
    t.dispose();
  }
}

let lastError: string | null = null;
/** Why the last graph capture failed (null when none did). */
export function lastGraphError(): string | null { return lastError; }

/** Frees the graphs captured for `unet` (their memory pools and static buffers). */
export function releaseUNetGraphs(unet: UNet2DConditionModel): void {
  const byKey = graphs.get(unet);
  if (!byKey) return;
  for (const e of byKey.values()) e.graph?.dispose();
  graphs.delete(unet);
}

/** Number of live graphs captured for `unet` (tests, benchmarks). */
export function unetGraphCount(unet: UNet2DConditionModel): number {
  let n = 0;
  for (const e of graphs.get(unet)?.values() ?? []) if (e.graph && !e.graph.disposed) n++;
  return n;
}
