/**
 * A module's parameters (or a host state dict's tensors) written as a safetensors file in
 * checkpoint (diffusers/transformers) layout and names, one tensor at a time: each is converted to the file's dtype on its own device, read
 * back, written and freed, so saving an SD U-Net from a GPU needs one tensor's host memory, not
 * the model's.
 */
import type { Module } from "../nn/module";
import { Tensor } from "../tensor";
import type { HostStateDictSource } from "./state-dict";
import { noGrad, rawNative } from "../autograd";
import * as fs from "fs";
import * as path from "path";
import { writeSafetensorsStreaming, type SafetensorsDType } from "./safetensors";
import { writeJsonFile } from "./files";
import { ModelFolder, openWeightsFile } from "./model-folder";

export type SaveDType = "float32" | "float16" | "bfloat16";
export const SAVE_DTYPES: readonly SaveDType[] = ["float32", "float16", "bfloat16"];
export const SAFETENSORS_DTYPE_OF: Readonly<Record<SaveDType, SafetensorsDType>> = { float32: "F32", float16: "F16", bfloat16: "BF16" };

/** A tensor's values as little-endian bytes of `dtype`, read back to the host. */
export async function tensorBytes(t: Tensor, dtype: SaveDType): Promise<Uint8Array> {
  if (t.device === "cpu" && t.dtype === dtype && t.isContiguous) return new Uint8Array(await t.handle.read());
  const h = rawNative().to(t.handle, "cpu", dtype);
  try {
    return new Uint8Array(await h.read());
  } finally {
    h.dispose();
  }
}

export interface WriteModuleOptions {
  dtype: SaveDType;
  /** A parameter tensor -> the tensor to save in its place (e.g. its EMA average). */
  replace?: ReadonlyMap<Tensor, Tensor>;
}

/** Writes every parameter of `module` to `file` (atomically), converted to `dtype`. */
export async function writeModuleWeights(file: string, module: Module, opts: WriteModuleOptions): Promise<void> {
  const values = new Map(module.namedParameters());
  const specs = new Map(module.namedParameterSpecs().map(([name, spec]) => [name, spec]));
  const fileDType = SAFETENSORS_DTYPE_OF[opts.dtype];
  const header = Object.fromEntries([...specs].map(([name, spec]) => [name, { dtype: fileDType, shape: [...spec.shape] }]));
  await writeSafetensorsStreaming(file, header, async (name) => {
    const p = values.get(name);
    if (!p) throw new Error(`${module.constructor.name}: parameter ${name} is not loaded, so it cannot be saved`);
    const t = opts.replace?.get(p) ?? p;
    const spec = specs.get(name)!;
    // not recorded: trained parameters require grad, and a layout change would stay on the tape
    const ck = noGrad(() => (spec.toCheckpoint ? spec.toCheckpoint(t) : t.contiguous()));
    try {
      return await tensorBytes(ck, opts.dtype);
    } finally {
      ck.dispose();
    }
  }, { format: "pt" });
}

/** Writes every tensor of a host source (e.g. a converted checkpoint) to `file`, one at a time, in `dtype`. */
export async function writeSourceWeights(file: string, source: HostStateDictSource, dtype: SaveDType): Promise<void> {
  const fileDType = SAFETENSORS_DTYPE_OF[dtype];
  const specs = Object.fromEntries(source.keys().map((k) => [k, { dtype: fileDType, shape: [...source.shape(k)] }]));
  await writeSafetensorsStreaming(file, specs, async (k) => {
    const t = Tensor.fromArray(source.readFloat32(k), [source.shape(k).reduce((a, b) => a * b, 1)]);
    try {
      return await tensorBytes(t, dtype);
    } finally {
      t.dispose();
    }
  }, { format: "pt" });
}

/** One component of a model folder: `<dir>/config.json` and its weights file, `weightsFile`. */
export async function writeModuleComponent(dir: string, config: Record<string, unknown>, weightsFile: string, module: Module, opts: WriteModuleOptions): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await writeModuleWeights(path.join(dir, weightsFile), module, opts);
  writeJsonFile(path.join(dir, "config.json"), config);
}

/** The components whose weights a pipeline folder's precision is read from. */
export const WEIGHTED_COMPONENTS = ["unet", "vae", "text_encoder", "text_encoder_2"] as const;

/**
 * The precision the input's weights are stored in, which convert and merge keep by default: their
 * one dtype when they share it, else float32 (so that nothing is rounded unasked; F64 counts as
 * float32).
 */
export function storedDType(input: string, variant?: string): SaveDType {
  const folder = fs.statSync(input).isDirectory() ? ModelFolder.open(input) : null;
  const sources = folder ? WEIGHTED_COMPONENTS.filter((c) => folder.has(c)).map((c) => folder.weights(c, { variant })) : [openWeightsFile(input)];
  const of = Object.fromEntries(Object.entries(SAFETENSORS_DTYPE_OF).map(([d, s]) => [s, d])) as Record<string, SaveDType>;
  const seen = new Set<SaveDType>();
  try {
    for (const s of sources) for (const k of s.keys()) {
      const d = s.diskDType(k);
      if (d in of || d === "F64") seen.add(of[d] ?? "float32");
    }
  } finally {
    for (const s of sources) s.close();
  }
  return seen.size === 1 ? [...seen][0] : "float32";
}
