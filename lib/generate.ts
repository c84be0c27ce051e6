/**
 * The one-call API: `generate({ prompt })` loads a model (the built-in one unless `model` names a
 * diffusers folder or a single-file checkpoint), keeps it loaded, and runs text-to-image with it.
 *
 * Loaded pipelines are cached per (model path, device, dtype, load options): loading reads and
 * converts every weight, which costs far more than a short generation, so repeated calls reuse one
 * pipeline. The cache holds the load promise, so concurrent first calls share a single load, and a
 * failed load is forgotten so the next call retries. `releasePipelines()` frees them all.
 */
import * as fs from "fs";
import * as path from "path";
import { packageRoot } from "./native";
import { loadPipeline, type LoadPipelineOptions } from "./pipelines/load";
import { resolvePipelineDevice, resolvePipelineDType } from "./pipelines/load";
import type { StableDiffusionPipeline } from "./pipelines/stable-diffusion";
import type { GenerateOptions, GenerateResult } from "./pipelines/text-to-image";
import type { Img2ImgOptions } from "./pipelines/image-to-image";
import type { InpaintOptions } from "./pipelines/inpaint";

/** Which model to use and how to load it; the rest of the options are generate()'s. */
export interface ModelOptions {
  /** A diffusers model folder or a single-file `.safetensors` checkpoint. Default: the built-in model. */
  model?: string;
  /** "auto" (default) picks CUDA when a GPU answers. */
  device?: LoadPipelineOptions["device"];
  /** Default float16 on CUDA, float32 on the CPU. */
  dtype?: LoadPipelineOptions["dtype"];
  /** loadPipeline's options for diffusers variants and single-file checkpoints. */
  variant?: string;
  configs?: LoadPipelineOptions["configs"];
  tokenizer?: string;
  /** The VAE's precision (loadPipeline's vaeDtype). Default "auto". */
  vaeDtype?: LoadPipelineOptions["vaeDtype"];
  /**
   * LoRA files merged after loading (pipe.loadLora), in order: paths, or { file, scale }. Each
   * distinct list gets its own cached pipeline; to switch LoRAs often on one model, use
   * loadPipeline() with loadLora()/unloadLoras().
   */
  loras?: readonly (string | { file: string; scale?: number })[];
  /** Textual-inversion embeddings loaded after the LoRAs (pipe.loadTextualInversion): paths, or { file, token }. Part of the cache key too. */
  embeddings?: readonly (string | { file: string; token?: string })[];
}

export type TopLevelGenerateOptions = GenerateOptions & ModelOptions;
export type TopLevelImg2ImgOptions = Img2ImgOptions & ModelOptions;
export type TopLevelInpaintOptions = InpaintOptions & ModelOptions;

const MODEL_KEYS: readonly (keyof ModelOptions)[] = ["model", "device", "dtype", "variant", "configs", "tokenizer", "vaeDtype", "loras", "embeddings"];

/** Where the built-in model lives: `models/builtin` (a diffusers folder) under the package root. */
export const BUILTIN_MODEL_DIR = path.join(packageRoot, "models", "builtin");

/** The built-in model's folder, or null when this installation has none. */
export function builtinModelPath(): string | null {
  try {
    return fs.statSync(path.join(BUILTIN_MODEL_DIR, "model_index.json")).isFile() ? BUILTIN_MODEL_DIR : null;
  } catch {
    return null;
  }
}

/** The error every entry point gives when no model was named and none is built in. */
export class NoBuiltinModelError extends Error {
  constructor(op: string) {
    super(`${op}: no built-in model is installed (looked for ${BUILTIN_MODEL_DIR}); pass a model: a diffusers folder or a .safetensors checkpoint`);
    this.name = "NoBuiltinModelError";
  }
}

const cache = new Map<string, Promise<StableDiffusionPipeline>>();

function realPath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);  // a missing path is reported when it is opened
  }
}

/** The loras option as [file, scale] pairs, checked. */
function loraList(op: string, v: unknown): [string, number][] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new TypeError(`${op}: loras must be an array of LoRA file paths or { file, scale } objects`);
  return v.map((x: unknown): [string, number] => {
    if (typeof x === "string" && x !== "") return [x, 1];
    const o = x as { file?: unknown; scale?: unknown };
    if (o && typeof o === "object" && typeof o.file === "string" && o.file !== "" && (o.scale === undefined || (typeof o.scale === "number" && Number.isFinite(o.scale))))
      return [o.file, (o.scale as number | undefined) ?? 1];
    throw new TypeError(`${op}: each lora must be a file path or { file: string, scale?: finite number }, got ${JSON.stringify(x)}`);
  });
}

/** The embeddings option as [file, token | null] pairs, checked. */
function embeddingList(op: string, v: unknown): [string, string | null][] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new TypeError(`${op}: embeddings must be an array of embedding file paths or { file, token } objects`);
  return v.map((x: unknown): [string, string | null] => {
    if (typeof x === "string" && x !== "") return [x, null];
    const o = x as { file?: unknown; token?: unknown };
    if (o && typeof o === "object" && typeof o.file === "string" && o.file !== "" && (o.token === undefined || typeof o.token === "string"))
      return [o.file, (o.token as string | undefined) ?? null];
    throw new TypeError(`${op}: each embedding must be a file path or { file: string, token?: string }, got ${JSON.stringify(x)}`);
  });
}

function cacheKey(modelPath: string, device: string, dtype: string, o: ModelOptions, loras: [string, number][], embeddings: [string, string | null][]): string {
  return JSON.stringify([realPath(modelPath), device, dtype, o.vaeDtype ?? "auto", o.variant ?? null, o.configs ?? null, o.tokenizer ?? null,
    loras.map(([f, s]) => [realPath(f), s]), embeddings.map(([f, t]) => [realPath(f), t])]);
}

/**
 * The pipeline for a model, loaded on first use and cached (see the file comment). Do not dispose
 * it yourself; call releasePipelines() (a disposed pipeline is reloaded on the next call anyway).
 */
export async function getPipeline(opts: ModelOptions = {}, op = "getPipeline"): Promise<StableDiffusionPipeline> {
  const modelPath = opts.model ?? builtinModelPath();
  if (modelPath === null) throw new NoBuiltinModelError(op);
  if (typeof modelPath !== "string" || modelPath === "") throw new TypeError(`${op}: model must be a path to a diffusers folder or a .safetensors file`);
  // "auto" and the default dtype are resolved first, so { device: "auto" } and { device: "cpu" } share one load on a CPU-only machine
  const device = resolvePipelineDevice(op, opts.device);
  const dtype = resolvePipelineDType(op, opts.dtype, device);
  const loras = loraList(op, opts.loras);
  const embeddings = embeddingList(op, opts.embeddings);
  const key = cacheKey(path.resolve(modelPath), device, dtype, opts, loras, embeddings);
  const hit = cache.get(key);
  if (hit) {
    const pipe = await hit.catch(() => null);
    if (pipe && !pipe.disposed) return pipe;
    if (cache.get(key) === hit) cache.delete(key);
  }
  const load: LoadPipelineOptions = { device, dtype };
  if (opts.variant !== undefined) load.variant = opts.variant;
  if (opts.configs !== undefined) load.configs = opts.configs;
  if (opts.tokenizer !== undefined) load.tokenizer = opts.tokenizer;
  if (opts.vaeDtype !== undefined) load.vaeDtype = opts.vaeDtype;
  const pending = loadPipeline(modelPath, load).then((pipe) => {
    try {
      for (const [file, scale] of loras) pipe.loadLora(file, { scale });
      for (const [file, token] of embeddings) pipe.loadTextualInversion(file, token === null ? {} : { token });
      return pipe;
    } catch (e) {
      pipe.dispose();
      throw e;
    }
  });
  cache.set(key, pending);
  pending.catch(() => {
    if (cache.get(key) === pending) cache.delete(key);
  });
  return pending;
}

/** Disposes every cached pipeline (their weights are freed; later calls load again). */
export async function releasePipelines(): Promise<void> {
  const pending = [...cache.values()];
  cache.clear();
  for (const p of await Promise.allSettled(pending)) if (p.status === "fulfilled") p.value.dispose();
}

function split<T extends ModelOptions>(opts: T, op: string): [ModelOptions, Omit<T, keyof ModelOptions>] {
  if (opts === null || typeof opts !== "object") throw new TypeError(`${op}: options must be an object`);
  const model: ModelOptions = {};
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) {
    if ((MODEL_KEYS as readonly string[]).includes(k)) (model as Record<string, unknown>)[k] = v;
    else rest[k] = v;
  }
  return [model, rest as Omit<T, keyof ModelOptions>];
}

/**
 * Text to image in one call: the options of `pipe.generate()` plus `model`, `device` and `dtype`
 * (see ModelOptions). Without `model` it uses the built-in model.
 */
export async function generate(opts: TopLevelGenerateOptions): Promise<GenerateResult> {
  const [model, rest] = split(opts, "generate");
  const pipe = await getPipeline(model, "generate");
  return pipe.generate(rest as GenerateOptions);
}

/** Image to image in one call: the options of `pipe.img2img()` plus ModelOptions. */
export async function img2img(opts: TopLevelImg2ImgOptions): Promise<GenerateResult> {
  const [model, rest] = split(opts, "img2img");
  const pipe = await getPipeline(model, "img2img");
  return pipe.img2img(rest as Img2ImgOptions);
}

/** Inpainting in one call: the options of `pipe.inpaint()` plus ModelOptions. */
export async function inpaint(opts: TopLevelInpaintOptions): Promise<GenerateResult> {
  const [model, rest] = split(opts, "inpaint");
  const pipe = await getPipeline(model, "inpaint");
  return pipe.inpaint(rest as InpaintOptions);
}
