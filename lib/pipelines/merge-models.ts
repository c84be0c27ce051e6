/**
 * Checkpoint merging, as A1111's Checkpoint Merger does it: a weighted sum A·(1-α) + B·α, or an
 * added difference A + (B - C)·α (e.g. C the base model B was fine-tuned from, to move its
 * changes onto A). Inputs are all single files or all diffusers folders; tensors are merged one at
 * a time in float32 and written in the output dtype. Tensors that are not floating point, or that
 * B (or C) lacks or holds in another shape, are A's (A1111 copies them from A too); so are a
 * folder's configs, tokenizers and scheduler.
 */
import * as fs from "fs";
import * as path from "path";
import { ModelFolder, openWeightsFile, weightsFileName } from "../io/model-folder";
import { SAFETENSORS_DTYPE_OF, tensorBytes, type SaveDType } from "../io/module-weights";
import { writeSafetensorsStreaming } from "../io/safetensors";
import type { SafetensorsStateDict } from "../io/state-dict";
import { Tensor } from "../tensor";
import { prepareFolder } from "./save";
import { WEIGHTED_COMPONENTS } from "../io/module-weights";

export type MergeMethod = "weighted" | "add-difference";

export interface MergeOptions {
  /** The output's weight dtype. */
  dtype: SaveDType;
  method: MergeMethod;
  /** B's weight (weighted sum) or the difference's scale. */
  alpha: number;
  /** add-difference: the third model. */
  c?: string;
  /** Folders: read `<weights>.<variant>.safetensors`. */
  variant?: string;
}

export interface MergeResult {
  /** Tensors merged, and those taken from A unchanged (not float, or absent or reshaped in B/C). */
  merged: number;
  copied: number;
}

const FLOAT = new Set(["F16", "BF16", "F32", "F64"]);

/** One weights file merged: every tensor of A, merged where B (and C) have it in the same shape. */
async function mergeFile(a: SafetensorsStateDict, others: SafetensorsStateDict[], out: string, o: MergeOptions, counts: MergeResult): Promise<void> {
  const keys = a.keys();
  const mergeable = (k: string) => FLOAT.has(a.diskDType(k)) && others.every((s) => s.has(k) && FLOAT.has(s.diskDType(k)) && sameShape(s.shape(k), a.shape(k)));
  const specs = Object.fromEntries(keys.map((k) => [k, { dtype: FLOAT.has(a.diskDType(k)) ? SAFETENSORS_DTYPE_OF[o.dtype] : a.diskDType(k), shape: [...a.shape(k)] }]));
  await writeSafetensorsStreaming(out, specs, async (k) => {
    if (!FLOAT.has(a.diskDType(k))) {
      counts.copied++;
      return a.readRaw(k);  // integer buffers as they are
    }
    const x = a.readFloat32(k);
    if (mergeable(k)) {
      counts.merged++;
      const [b, c] = others.map((s) => s.readFloat32(k));
      if (o.method === "weighted") for (let i = 0; i < x.length; i++) x[i] = x[i] * (1 - o.alpha) + b[i] * o.alpha;
      else for (let i = 0; i < x.length; i++) x[i] = x[i] + (b[i] - c[i]) * o.alpha;
    } else {
      counts.copied++;
    }
    const t = Tensor.fromArray(x, [x.length]);
    try {
      return await tensorBytes(t, o.dtype);
    } finally {
      t.dispose();
    }
  }, { format: "pt" });
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Merges A and B (and C) into `out` (a .safetensors file for single-file inputs, a folder for folders). */
export async function mergeModels(a: string, b: string, out: string, o: MergeOptions): Promise<MergeResult> {
  const inputs = [a, b, ...(o.method === "add-difference" ? [o.c!] : [])].map((p) => path.resolve(p));
  for (const p of inputs) if (!fs.existsSync(p)) throw new Error(`merge: ${p} does not exist`);
  if (!(Number.isFinite(o.alpha))) throw new RangeError(`merge: alpha must be a finite number, got ${o.alpha}`);
  if (o.method === "add-difference" && !o.c) throw new RangeError(`merge: add-difference needs a third model (c)`);
  const folders = inputs.map((p) => fs.statSync(p).isDirectory());
  if (folders.some((f) => f !== folders[0])) throw new Error(`merge: the models must all be single files or all diffusers folders (convert one with diffusekit convert)`);
  const counts: MergeResult = { merged: 0, copied: 0 };
  const target = path.resolve(out);
  if (inputs.includes(target)) throw new Error(`merge: the output must not be one of the inputs`);
  if (!folders[0]) {
    if (!/\.safetensors$/i.test(target)) throw new RangeError(`merge: single-file models merge into a .safetensors file, got ${out}`);
    const opened = inputs.map((p) => openWeightsFile(p));
    try {
      await mergeFile(opened[0], opened.slice(1), target, o, counts);
    } finally {
      for (const s of opened) s.close();
    }
    return counts;
  }
  const models = inputs.map((p) => ModelFolder.open(p));
  prepareFolder(target);
  // everything but the weights from A; then each component's weights merged
  for (const entry of fs.readdirSync(inputs[0], { withFileTypes: true })) {
    if (!entry.isDirectory()) fs.copyFileSync(path.join(inputs[0], entry.name), path.join(target, entry.name));
  }
  for (const name of models[0].index.components.keys()) {
    const dir = models[0].componentDir(name), outDir = path.join(target, name);
    fs.mkdirSync(outDir, { recursive: true });
    const weighted = (WEIGHTED_COMPONENTS as readonly string[]).includes(name);
    for (const f of fs.readdirSync(dir)) {
      // a merged component gets one weights file; other weights (other variants, shards, pickles) stay behind
      const isWeights = /\.(safetensors|bin|ckpt|pt|pth)$/.test(f) || /\.index(\.[^.]+)?\.json$/.test(f);
      if (!weighted || !isWeights) fs.copyFileSync(path.join(dir, f), path.join(outDir, f));
    }
    if (!weighted) continue;
    const opened = models.map((m) => m.weights(name, { variant: o.variant }));
    try {
      const base = name.startsWith("text_encoder") ? "model" : "diffusion_pytorch_model";
      const file = opened[0].files.length === 1 ? path.basename(opened[0].files[0].path) : weightsFileName(base, o.variant);
      await mergeFile(opened[0], opened.slice(1), path.join(outDir, file), o, counts);
    } finally {
      for (const s of opened) s.close();
    }
  }
  return counts;
}
