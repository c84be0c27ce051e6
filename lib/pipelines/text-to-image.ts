/**
 * Text to image: diffusers' StableDiffusionPipeline.__call__ (0.27.2), in five stages that read
 * top to bottom in textToImage(): 1 defaults and validation, 2 encode the prompt (and the negative
 * prompt for classifier-free guidance), 3 prepare the latents, 4 the denoising loop with CFG,
 * 5 decode with the VAE. The stage helpers are shared with image-to-image.ts.
 *
 * Seeds: image k of a call gets seed + k and its own torch-compatible CPU generator (diffusers'
 * list-of-generators form), so every image can be reproduced alone, and a single image with seed
 * s starts from exactly the latents of diffusers' `torch.Generator("cpu").manual_seed(s)`.
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { synchronize } from "../devices";
import { TorchGenerator, randnTensor } from "../random/torch-generator";
import { SAMPLER_NAMES, createScheduler, schedulerFromConfig, type Scheduler, type NoiseSource } from "../schedulers";
import { GeneratedImage, latentPreviews, type ImageParameters } from "./images";
import { decodedPixels } from "./decoded-pixels";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { unetStep } from "../models/unet-graph";
import { tiledDecodeTensor, tileGeometry, type VaeTilingOptions } from "../models/vae-tiling";
import type { AddedCond } from "../models/unet-2d-condition";
import { encodeConditioningXL } from "./sdxl-conditioning";
import { encodeWeightedTexts } from "./weighted-encoding";
import { hiresSize, hiresStart, resolveHires, type HiresOptions } from "./hires-fix";
import { applyVariation, resolveVariation, type VariationOptions } from "./variation-seed";
import { checkDenoisingFraction, timestepsUntil } from "./partial-schedule";
import { enterSeamless, leaveSeamless, resolveTiling } from "./tiling";
import { hasPromptEditing, promptAtStep, promptSchedule } from "./prompt-editing";
import { controlResidualsAt, disposeControls, resolveControls, type ControlOptions, type ResolvedControl } from "./controlnet";

/** Sampler names generate() takes: the lib/schedulers names plus "default" (the model's own scheduler). */
export const SAMPLER_CHOICES: readonly string[] = [...SAMPLER_NAMES, "default"];

/** Names A1111-compatible tools show, for the PNG parameters. */
const SAMPLER_DISPLAY: Record<string, string> = {
  ddim: "DDIM", ddpm: "DDPM", pndm: "PLMS", euler: "Euler", "euler-a": "Euler a", heun: "Heun", lms: "LMS",
  "dpm++2m": "DPM++ 2M", "dpm++2m-karras": "DPM++ 2M Karras", "dpm++2m-sde-karras": "DPM++ 2M SDE Karras",
  unipc: "UniPC", lcm: "LCM",
};
const CLASS_DISPLAY: Record<string, string> = {
  DDIMScheduler: "DDIM", DDPMScheduler: "DDPM", PNDMScheduler: "PLMS", EulerDiscreteScheduler: "Euler",
  EulerAncestralDiscreteScheduler: "Euler a", HeunDiscreteScheduler: "Heun", LMSDiscreteScheduler: "LMS",
  DPMSolverMultistepScheduler: "DPM++ 2M", UniPCMultistepScheduler: "UniPC", LCMScheduler: "LCM",
};

/** What onStep receives after every denoising step. */
export interface StepInfo {
  /** 1-based: step / total is the progress. */
  step: number;
  total: number;
  /** The timestep the U-Net saw at this step. */
  timestep: number;
  /**
   * The latents after this step ([B,4,h,w] float32 NCHW on the pipeline's device). Valid only
   * until the callback (or the promise it returns) finishes; do not dispose it.
   */
  latents: Tensor;
  /** Every `previewEvery` steps: a cheap preview of the first image (latent resolution, no VAE). */
  preview?: GeneratedImage;
  /** The previews of every image of the batch. */
  previews?: GeneratedImage[];
}

/** Options generate() and img2img() share. */
export interface CommonGenerateOptions {
  prompt: string | readonly string[];
  /** One for all prompts or one per prompt. Default "" (what diffusers encodes for "no negative prompt"). */
  negativePrompt?: string | readonly string[];
  /** Denoising steps. Default 30. */
  steps?: number;
  /** Classifier-free guidance scale; <= 1 turns guidance off (one U-Net batch, negative prompt unused). Default 7.5. */
  cfg?: number;
  /** One of SAMPLER_CHOICES; "default" is the model's own scheduler class. Default "dpm++2m-karras". */
  sampler?: string;
  /**
   * scheduler_config.json keys that replace the model's for this run (diffusers'
   * `Scheduler.from_config(config, **overrides)`), e.g. `{ timestep_spacing: "trailing" }`.
   */
  schedulerConfig?: Readonly<Record<string, unknown>>;
  /** Seed of image 0; image k uses seed + k. Default: a random 32-bit seed (reported in `seeds`). */
  seed?: number;
  /** Images per prompt. Default 1. */
  numImages?: number;
  /** DDIM's eta (0 = deterministic); other samplers ignore it, as in diffusers. Default 0. */
  eta?: number;
  /** diffusers' guidance_rescale (Lin et al. 2023, §3.4), in [0, 1]. Default 0 (off). */
  guidanceRescale?: number;
  /** Use the output of the text encoder's layer L-k (diffusers' clip_skip; as there, only for the prompt, not the negative prompt). Default 0. */
  clipSkip?: number;
  /**
   * ControlNet guidance (controlnet.ts): { model: await loadControlNet(dir), image, scale, start,
   * end }, or a list of them (their residuals add up). generate() and img2img().
   */
  controlnet?: ControlOptions | readonly ControlOptions[];
  /**
   * Decode in overlapping tiles (diffusers' enable_vae_tiling): the VAE's memory stays that of one
   * tile at any size, with soft seams. true: tiles of the VAE's sample_size (512 px for SD 1.5),
   * overlap 0.25; or { tileSize, overlap }. Default false.
   */
  vaeTiling?: boolean | VaeTilingOptions;
  /**
   * A1111-style emphasis and long prompts: (word), (word:1.3), [word], BREAK, and prompts beyond 75
   * tokens in 75-token chunks (prompt-weighting.ts). Default false: diffusers' plain encoding,
   * where brackets are ordinary text and the prompt is cut at 75 tokens.
   */
  promptWeighting?: boolean;
  /** SDXL: the prompt(s) for the second text encoder (diffusers' prompt_2). Default: prompt. */
  prompt2?: string | readonly string[];
  /** SDXL: the negative prompt(s) for the second text encoder. Default: negativePrompt. */
  negativePrompt2?: string | readonly string[];
  /** SDXL micro-conditioning (diffusers' original_size): the size the model is told the picture had. Default: the output size. */
  originalSize?: { width: number; height: number };
  /** SDXL: crops_coords_top_left, in pixels. Default { top: 0, left: 0 }. */
  cropTopLeft?: { top: number; left: number };
  /** SDXL: target_size. Default: the output size. */
  targetSize?: { width: number; height: number };
  /** SDXL refiner: the aesthetic score it is conditioned on (diffusers' aesthetic_score). Default 6. */
  aestheticScore?: number;
  /** SDXL refiner: the aesthetic score of CFG's negative rows. Default 2.5. */
  negativeAestheticScore?: number;
  onStep?: (info: StepInfo) => void | Promise<void>;
  /** Aborting rejects with an Error named "AbortError" at the next step boundary; every tensor is freed. */
  signal?: AbortSignal;
  /** Attach previews to onStep every this many steps. Default: no previews. */
  previewEvery?: number;
  /**
   * "latent": stop before the VAE and return the final latents (`result.latents`, no images), e.g.
   * for img2img's `initLatents` on another model. Default "image".
   */
  outputType?: "image" | "latent";
  /** Seamless tiling (A1111's "Tiling"): wrap-around padding in every convolution, so the image tiles without seams. Default false. */
  tiling?: boolean;
  /**
   * Replaces the seeded generators: every random draw (initial latents when `latents` is not
   * given, the VAE posterior sample and noise of img2img, stochastic sampler steps) comes from
   * `generator.randn(shape)` for the whole batch, in diffusers' call order. For exact replays.
   */
  generator?: NoiseSource;
}

export interface GenerateOptions extends CommonGenerateOptions {
  /**
   * Hires fix: after the first pass, upscale (latents or image) and redraw with img2img's partial
   * schedule: true (2x, strength 0.5, latent upscale) or { scale, strength, steps, upscale }.
   * onStep then reports the second pass as a second run of steps. Default off.
   */
  hires?: boolean | HiresOptions;
  /** Pixels; a multiple of the VAE scale factor. Default: the U-Net's sample_size x the scale factor. */
  width?: number;
  height?: number;
  /**
   * Starting noise [prompts·numImages, 4, height/f, width/f] (NCHW, unscaled: it is multiplied by the
   * sampler's init_noise_sigma, as diffusers does with `latents=`). Default: drawn from the seeds.
   */
  latents?: Float32Array | Tensor;
  /**
   * A1111's variation seeds: image k starts from slerp(strength, noise(seed + k), noise(variation.seed + k)),
   * so small strengths give variations of the seed's image (variation-seed.ts). Not with latents or generator.
   */
  variation?: VariationOptions;
  /**
   * diffusers' denoising_end (SDXL's ensemble of expert denoisers): run only the schedule's
   * timesteps down to this fraction of the training schedule, leaving the rest to another model
   * (its img2img with `denoisingStart` and `initLatents`); use with outputType "latent".
   */
  denoisingEnd?: number;
}

export interface GenerateResult {
  /** Empty with outputType "latent". */
  images: GeneratedImage[];
  /** With outputType "latent": the final latents [B, C, h, w] (NCHW, not divided by the VAE's scaling factor). */
  latents?: { data: Float32Array; shape: number[] };
  /** The seed of each image. */
  seeds: number[];
  /** Wall time per stage, in seconds. */
  timings: { encode: number; denoise: number; decode: number };
}

export interface DecodeResult {
  images: GeneratedImage[];
  /** [B,3,H,W] the VAE's output, unclamped. */
  decoded: Float32Array;
  /** [B,H,W,3] clamp(decoded/2 + 0.5, 0, 1): diffusers' output_type="np". */
  imageFloat: Float32Array;
  /** [B,3,H,W] */
  shape: number[];
}

// ---------------------------------------------------------------------------------------------
// stage 1: defaults and validation

const COMMON_KEYS = [
  "prompt", "negativePrompt", "steps", "cfg", "sampler", "schedulerConfig", "seed", "numImages", "eta", "guidanceRescale", "clipSkip",
  "onStep", "signal", "previewEvery", "generator", "promptWeighting", "vaeTiling", "controlnet", "prompt2", "negativePrompt2", "originalSize", "cropTopLeft", "targetSize",
  "aestheticScore", "negativeAestheticScore", "outputType", "tiling",
];
const XL_KEYS = ["prompt2", "negativePrompt2", "originalSize", "cropTopLeft", "targetSize", "aestheticScore", "negativeAestheticScore"];
const REFINER_ONLY_KEYS = ["aestheticScore", "negativeAestheticScore"];
const NOT_FOR_REFINER_KEYS = ["prompt2", "negativePrompt2", "targetSize"];
export const GENERATE_KEYS: readonly string[] = [...COMMON_KEYS, "width", "height", "latents", "hires", "variation", "denoisingEnd"];

const MAX_SEED = Number.MAX_SAFE_INTEGER;
const MAX_SIZE = 16384;
const MAX_IMAGES = 256;

/** Everything stages 2-5 need, resolved and checked. */
export interface ResolvedRun {
  op: string;
  /** One entry per image (prompts repeated numImages times, diffusers' order). */
  prompts: string[];
  negatives: string[];
  /** The distinct prompts and negatives, and how many images each gets. */
  uniquePrompts: string[];
  uniqueNegatives: string[];
  promptWeighting: boolean;
  /** Tiled VAE decoding, checked (null: decode whole). */
  vaeTiling: VaeTilingOptions | null;
  /** Seamless tiling: wrap-around padding in the U-Net and VAE convolutions. */
  tiling: boolean;
  /** Whether a negative prompt was given (SDXL zeroes the negative embeddings when not, if the model says so). */
  negativeGiven: boolean;
  /** SDXL: the second encoder's texts, one per unique prompt / negative (defaults: the first's). */
  uniquePrompts2: string[];
  uniqueNegatives2: string[];
  /** SDXL micro-conditioning as given (null: default to the output size / no crop); the refiner's aesthetic scores. */
  xlSizes: {
    originalSize: { width: number; height: number } | null; cropTopLeft: { top: number; left: number }; targetSize: { width: number; height: number } | null;
    aesthetic: { score: number; negative: number } | null;
  };
  numImages: number;
  total: number;
  steps: number;
  cfg: number;
  cfgOn: boolean;
  sampler: string;
  samplerDisplay: string;
  /** The run's scheduler_config overrides (a second scheduler, for hires fix, is built with them too). */
  schedulerConfig?: Readonly<Record<string, unknown>>;
  scheduler: Scheduler;
  seeds: number[];
  /** Per-image generators, or the caller's single noise source. */
  generator: NoiseSource | TorchGenerator[];
  eta: number;
  guidanceRescale: number;
  clipSkip: number;
  onStep?: (info: StepInfo) => void | Promise<void>;
  signal?: AbortSignal;
  previewEvery: number;
}

const list = (xs: readonly string[]) => xs.map((x) => JSON.stringify(x)).join(", ");
const got = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : typeof v === "number" || typeof v === "boolean" || v == null ? String(v) : typeof v);

function integerIn(op: string, name: string, v: unknown, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
    throw new RangeError(`${op}: ${name} must be an integer in [${min}, ${max}], got ${got(v)}`);
  return v;
}

function numberIn(op: string, name: string, v: unknown, min: number, max: number, dflt: number, hint = ""): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max)
    throw new RangeError(`${op}: ${name} must be a number in [${min}, ${max === Infinity ? "inf" : max}]${hint}, got ${got(v)}`);
  return v;
}

/** Rejects option names the operation does not know (a typo would otherwise be silently ignored). */
export function checkKeys(op: string, opts: object, allowed: readonly string[]): void {
  if (opts === null || typeof opts !== "object") throw new TypeError(`${op}: options must be an object`);
  for (const k of Object.keys(opts))
    if (!allowed.includes(k)) throw new RangeError(`${op}: unknown option ${JSON.stringify(k)} (allowed: ${allowed.join(", ")})`);
}

function textList(op: string, name: string, v: unknown): string[] {
  if (typeof v === "string") return [v];
  if (Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === "string")) return [...v];
  throw new TypeError(`${op}: ${name} must be a string or a non-empty array of strings, got ${got(v)}`);
}

/** The sampler for a run: a fresh scheduler built from the model's scheduler config (+ overrides). */
export function makeScheduler(pipe: StableDiffusionPipeline, op: string, name: string, overrides?: Readonly<Record<string, unknown>>): { scheduler: Scheduler; display: string } {
  if (overrides !== undefined && (overrides === null || typeof overrides !== "object" || Array.isArray(overrides)))
    throw new TypeError(`${op}: schedulerConfig must be an object of scheduler_config.json keys`);
  const config = overrides ? { ...pipe.scheduler, ...overrides } : pipe.scheduler;
  if (name === "default") {
    const cls = pipe.defaultSchedulerClass;
    if (cls === null) throw new RangeError(`${op}: the model's scheduler config has no _class_name, so sampler "default" is undefined; choose one of ${list(SAMPLER_NAMES)}`);
    return { scheduler: schedulerFromConfig(cls, config), display: CLASS_DISPLAY[cls] ?? cls };
  }
  return { scheduler: createScheduler(name, pipe.scheduler, overrides), display: SAMPLER_DISPLAY[name] ?? name };
}

/** One text per prompt: a string for all, or a list as long as the prompts. */
function textsFor(op: string, name: string, v: unknown, n: number, dflt: string[]): string[] {
  if (v === undefined) return dflt;
  const xs = textList(op, name, v);
  if (xs.length === 1) return Array<string>(n).fill(xs[0]);
  if (xs.length !== n) throw new RangeError(`${op}: ${name} has ${xs.length} entries but prompt has ${n} (give one, or one per prompt)`);
  return xs;
}

function sizeOption(op: string, name: string, v: unknown): { width: number; height: number } | null {
  if (v === undefined) return null;
  const o = v as { width?: unknown; height?: unknown };
  if (!o || typeof o !== "object" || !Number.isInteger(o.width) || !Number.isInteger(o.height) || (o.width as number) < 1 || (o.height as number) < 1 || (o.width as number) > MAX_SIZE || (o.height as number) > MAX_SIZE)
    throw new RangeError(`${op}: ${name} must be { width, height } with positive integers up to ${MAX_SIZE}, got ${JSON.stringify(v)}`);
  return { width: o.width as number, height: o.height as number };
}

/** SDXL's options: refused by name on other models; defaults as diffusers' StableDiffusionXLPipeline. */
function resolveXlOptions(pipe: StableDiffusionPipeline, op: string, opts: CommonGenerateOptions, prompts: string[], negatives: string[]) {
  const given = (keys: string[]) => keys.filter((k) => (opts as unknown as Record<string, unknown>)[k] !== undefined);
  const xlOnly = pipe.isXL ? [] : given(XL_KEYS);
  if (xlOnly.length) throw new RangeError(`${op}: ${xlOnly.join(", ")} ${xlOnly.length > 1 ? "are" : "is"} for SDXL models (two text encoders); this model has one`);
  const refinerOnly = pipe.isXL && !pipe.isRefiner ? given(REFINER_ONLY_KEYS) : [];
  if (refinerOnly.length) throw new RangeError(`${op}: ${refinerOnly.join(", ")} condition the SDXL refiner; this is an SDXL base model`);
  const notForRefiner = pipe.isRefiner ? given(NOT_FOR_REFINER_KEYS) : [];
  if (notForRefiner.length)
    throw new RangeError(`${op}: ${notForRefiner.join(", ")} ${notForRefiner.length > 1 ? "do" : "does"} not apply to the SDXL refiner (one text encoder; its ids are size, crop and aesthetic score)`);
  const score = (name: string, v: unknown, d: number) => {
    if (v === undefined) return d;
    if (typeof v !== "number" || !Number.isFinite(v)) throw new RangeError(`${op}: ${name} must be a finite number, got ${JSON.stringify(v)}`);
    return v;
  };
  const aesthetic = pipe.isRefiner ? { score: score("aestheticScore", opts.aestheticScore, 6), negative: score("negativeAestheticScore", opts.negativeAestheticScore, 2.5) } : null;
  const uniquePrompts2 = textsFor(op, "prompt2", opts.prompt2, prompts.length, prompts);
  const uniqueNegatives2 = textsFor(op, "negativePrompt2", opts.negativePrompt2, negatives.length, negatives);
  const crop = opts.cropTopLeft;
  if (crop !== undefined && (!crop || typeof crop !== "object" || !Number.isInteger(crop.top) || !Number.isInteger(crop.left) || crop.top < 0 || crop.left < 0))
    throw new RangeError(`${op}: cropTopLeft must be { top, left } with non-negative integers, got ${JSON.stringify(crop)}`);
  return {
    uniquePrompts2, uniqueNegatives2,
    xlSizes: { originalSize: sizeOption(op, "originalSize", opts.originalSize), cropTopLeft: crop ?? { top: 0, left: 0 }, targetSize: sizeOption(op, "targetSize", opts.targetSize), aesthetic },
  };
}

export function resolveCommon(pipe: StableDiffusionPipeline, opts: CommonGenerateOptions, op: string, allowedKeys: readonly string[]): ResolvedRun {
  checkKeys(op, opts, allowedKeys);
  const uniquePrompts = textList(op, "prompt", opts.prompt);
  const uniqueNegatives = opts.negativePrompt === undefined ? uniquePrompts.map(() => "") : textList(op, "negativePrompt", opts.negativePrompt);
  if (uniqueNegatives.length === 1 && uniquePrompts.length > 1) while (uniqueNegatives.length < uniquePrompts.length) uniqueNegatives.push(uniqueNegatives[0]);
  if (uniqueNegatives.length !== uniquePrompts.length)
    throw new RangeError(`${op}: negativePrompt has ${uniqueNegatives.length} entries but prompt has ${uniquePrompts.length} (give one, or one per prompt)`);

  const sampler = opts.sampler ?? "dpm++2m-karras";
  if (typeof sampler !== "string" || !SAMPLER_CHOICES.includes(sampler))
    throw new RangeError(`${op}: sampler must be one of ${list(SAMPLER_CHOICES)}, got ${got(sampler)}`);
  const trainSteps = typeof pipe.scheduler["num_train_timesteps"] === "number" ? (pipe.scheduler["num_train_timesteps"] as number) : 1000;
  const steps = integerIn(op, "steps", opts.steps, 1, trainSteps, 30);
  const cfg = numberIn(op, "cfg", opts.cfg, 0, Infinity, 7.5, " (<= 1 turns guidance off)");
  const numImages = integerIn(op, "numImages", opts.numImages, 1, MAX_IMAGES, 1);
  const total = uniquePrompts.length * numImages;
  if (total > MAX_IMAGES) throw new RangeError(`${op}: prompts x numImages = ${total} images exceed the limit of ${MAX_IMAGES} per call`);
  const seed = integerIn(op, "seed", opts.seed, 0, MAX_SEED - total, Math.floor(Math.random() * 2 ** 32));
  const eta = numberIn(op, "eta", opts.eta, 0, Infinity, 0);
  const guidanceRescale = numberIn(op, "guidanceRescale", opts.guidanceRescale, 0, 1, 0);
  const layers = pipe.textEncoder.config.numHiddenLayers;
  const clipSkip = integerIn(op, "clipSkip", opts.clipSkip, 0, layers - 1, 0);
  const previewEvery = integerIn(op, "previewEvery", opts.previewEvery, 1, Number.MAX_SAFE_INTEGER, 0);
  if (opts.onStep !== undefined && typeof opts.onStep !== "function") throw new TypeError(`${op}: onStep must be a function`);
  const signal = opts.signal;
  if (signal !== undefined && (signal === null || typeof signal !== "object" || typeof signal.aborted !== "boolean"))
    throw new TypeError(`${op}: signal must be an AbortSignal`);
  const user = opts.generator;
  if (user !== undefined && (user === null || typeof user !== "object" || typeof user.randn !== "function"))
    throw new TypeError(`${op}: generator must have a randn(shape) method returning a Float32Array`);

  const xl = resolveXlOptions(pipe, op, opts, uniquePrompts, uniqueNegatives);
  if (opts.promptWeighting !== undefined && typeof opts.promptWeighting !== "boolean") throw new TypeError(`${op}: promptWeighting must be a boolean`);
  const promptWeighting = opts.promptWeighting ?? false;
  if (promptWeighting && pipe.isRefiner) throw new RangeError(`${op}: promptWeighting is not supported for the SDXL refiner`);
  const vt = opts.vaeTiling;
  if (vt !== undefined && typeof vt !== "boolean" && (vt === null || typeof vt !== "object"))
    throw new TypeError(`${op}: vaeTiling must be true, false or { tileSize, overlap }`);
  const vaeTiling = vt === true ? {} : vt ? { ...vt } : null;
  if (vaeTiling) tileGeometry(pipe.vae, vaeTiling);  // checks tileSize and overlap now

  const { scheduler, display } = makeScheduler(pipe, op, sampler, opts.schedulerConfig);
  const seeds = Array.from({ length: total }, (_, k) => seed + k);
  const rep = (xs: string[]) => xs.flatMap((x) => Array<string>(numImages).fill(x));
  return {
    op, prompts: rep(uniquePrompts), negatives: rep(uniqueNegatives), uniquePrompts, uniqueNegatives, numImages, total,
    negativeGiven: opts.negativePrompt !== undefined, promptWeighting, vaeTiling, tiling: resolveTiling(op, opts.tiling), ...xl,
    steps, cfg, cfgOn: cfg > 1, sampler, samplerDisplay: display, schedulerConfig: opts.schedulerConfig, scheduler, seeds,
    generator: user ?? seeds.map((s) => new TorchGenerator(s)),
    eta, guidanceRescale, clipSkip, onStep: opts.onStep, signal, previewEvery,
  };
}

/** The outputType option: "image" (default) or "latent". */
export function checkOutputType(op: string, v: unknown): "image" | "latent" {
  if (v === undefined || v === "image" || v === "latent") return v ?? "image";
  throw new RangeError(`${op}: outputType must be "image" or "latent", got ${JSON.stringify(v)}`);
}

/** The result of a run with outputType "latent": the final latents read back, no images, nothing decoded. */
export async function latentResult(final: Tensor, run: Pick<ResolvedRun, "seeds">, encode: number, denoise: number): Promise<GenerateResult> {
  const shape = [...final.shape];
  return { images: [], latents: { data: await final.toFloat32Array(), shape }, seeds: run.seeds, timings: { encode, denoise, decode: 0 } };
}

/** Checks a pixel size: a positive multiple of the VAE scale factor. */
export function checkSize(op: string, name: string, v: unknown, f: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < f || v > MAX_SIZE || v % f !== 0)
    throw new RangeError(`${op}: ${name} must be a positive multiple of ${f} (the VAE scale factor) up to ${MAX_SIZE}, got ${got(v)}`);
  return v;
}

export function abortError(op: string): Error {
  const e = new Error(`${op}: aborted`);
  e.name = "AbortError";
  return e;
}

export function throwIfAborted(run: ResolvedRun): void {
  if (run.signal?.aborted) throw abortError(run.op);
}

const now = (): number => performance.now() / 1000;

// ---------------------------------------------------------------------------------------------
// stage 2: prompt encoding

/** What the U-Net is conditioned on, for the whole batch (CFG's negative rows first). */
export interface Conditioning {
  /** encoder_hidden_states [rows, 77, D]. */
  context: Tensor;
  /** SDXL: pooled text embeddings and size/crop ids per row. */
  added?: AddedCond;
  /** Prompt editing (prompt-editing.ts): from step `from` (0-based) on, `cond`; ascending `from`. */
  later?: { from: number; cond: Conditioning }[];
}

export function disposeConditioning(c: Conditioning | null): void {
  c?.context.dispose();
  c?.added?.textEmbeds.dispose();
  c?.added?.timeIds.dispose();
  for (const l of c?.later ?? []) disposeConditioning(l.cond);
}

/** The conditioning of step i (0-based): the last prompt edit begun by then, else the first. */
export function conditioningAt(c: Conditioning, i: number): Conditioning {
  let at = c;
  for (const l of c.later ?? []) if (l.from <= i) at = l.cond;
  return at;
}

/** Each of B distinct rows of `t` repeated n times, in order. */
export function repeatRows(t: Tensor, B: number, n: number): Tensor[] {
  return Array.from({ length: B }, (_, b) => Array<Tensor>(n).fill(ops.slice(t, 0, b, b + 1))).flat();
}

export function catRows(parts: Tensor[]): Tensor {
  return parts.length === 1 ? ops.contiguous(parts[0]) : ops.concat(parts, 0);
}

/**
 * The U-Net's conditioning for the whole batch: cat([negative, prompt]) rows under CFG
 * (diffusers' order), else the prompt rows; each distinct prompt is encoded once and repeated
 * numImages times. SDXL models add pooled text and size ids (sdxl-conditioning.ts). Kept: the
 * caller disposes it (disposeConditioning).
 */
export function encodeConditioning(pipe: StableDiffusionPipeline, run: ResolvedRun, width: number, height: number): Conditioning {
  if (pipe.isXL) return encodeConditioningXL(pipe, run, width, height);
  const B = run.uniquePrompts.length, N = run.numImages;
  if (run.promptWeighting) return { context: encodeWeightedRows(pipe, run) };
  const pos = pipe.encodeTexts(run.uniquePrompts, run.clipSkip);
  // diffusers encodes the negative prompt without clip_skip
  const neg = run.cfgOn ? pipe.encodeTexts(run.uniqueNegatives, 0) : null;
  try {
    return { context: tidy(() => catRows([...(neg ? repeatRows(neg, B, N) : []), ...repeatRows(pos, B, N)])) };
  } finally {
    pos.dispose();
    neg?.dispose();
  }
}

/**
 * Stage 2 of every pipeline: the conditioning, finished on the device; an abort noticed here frees
 * it. With promptWeighting, prompts that edit themselves over the `steps` of the pass ([a:b:0.5],
 * [a|b]) get one conditioning per stretch of steps with the same texts (Conditioning.later). As
 * in the web UI, the schedule counts model calls: steps x 2 for a second-order sampler (Heun).
 */
export async function encodeStage(pipe: StableDiffusionPipeline, run: ResolvedRun, width: number, height: number, steps: number): Promise<Conditioning> {
  const cond = run.promptWeighting ? encodeEdited(pipe, run, width, height, steps * run.scheduler.order) : encodeConditioning(pipe, run, width, height);
  try {
    await synchronize(pipe.device);
    throwIfAborted(run);
    return cond;
  } catch (e) {
    disposeConditioning(cond);
    throw e;
  }
}

/** Every prompt text of the run at each step of `steps`; consecutive steps with the same texts share one encoding. */
function encodeEdited(pipe: StableDiffusionPipeline, run: ResolvedRun, width: number, height: number, steps: number): Conditioning {
  const fields = ["uniquePrompts", "uniqueNegatives", "uniquePrompts2", "uniqueNegatives2"] as const;
  if (!fields.some((f) => run[f].some(hasPromptEditing))) return encodeConditioning(pipe, run, width, height);
  const schedules = fields.map((f) => run[f].map((text) => promptSchedule(text, steps)));
  const textsAt = (i: number) => schedules.map((list) => list.map((sched) => promptAtStep(sched, i)));
  const stretches: { from: number; texts: string[][] }[] = [];
  for (let i = 0; i < steps; i++) {
    const texts = textsAt(i);
    if (!stretches.length || JSON.stringify(texts) !== JSON.stringify(stretches[stretches.length - 1].texts)) stretches.push({ from: i, texts });
  }
  const encodeAt = (texts: string[][]) => encodeConditioning(pipe, { ...run, ...Object.fromEntries(fields.map((f, k) => [f, texts[k]])) }, width, height);
  const first = encodeAt(stretches[0].texts);
  try {
    first.later = [];
    for (const st of stretches.slice(1)) first.later.push({ from: st.from, cond: encodeAt(st.texts) });
    return first;
  } catch (e) {
    disposeConditioning(first);
    throw e;
  }
}

/** The weighted path: prompts and negatives chunked to one length; the negatives without clip_skip, as above. */
function encodeWeightedRows(pipe: StableDiffusionPipeline, run: ResolvedRun): Tensor {
  const B = run.uniquePrompts.length, N = run.numImages;
  const texts = [...run.uniquePrompts, ...(run.cfgOn ? run.uniqueNegatives : [])];
  // one chunk count for all rows: encode together, with the prompt's clip_skip, then the negatives again without it
  const withSkip = encodeWeightedTexts(pipe, texts, run.clipSkip);
  const noSkip = run.cfgOn && run.clipSkip > 0 ? encodeWeightedTexts(pipe, texts, 0) : withSkip;
  const rows = (ts: Tensor[]) => ts.flatMap((t) => Array<Tensor>(N).fill(t));
  try {
    return tidy(() => catRows([...rows(noSkip.slice(B)), ...rows(withSkip.slice(0, B))]));
  } finally {
    for (const t of new Set([...withSkip, ...noSkip])) t.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// stage 3: latents

/** diffusers' randn_tensor(shape, generator) on the CPU, float32 (list form: item k from generator k). */
export function drawNoise(shape: readonly number[], generator: NoiseSource | TorchGenerator[]): Float32Array {
  const data = Array.isArray(generator) ? randnTensor(shape, generator) : (generator as NoiseSource).randn(shape);
  const n = shape.reduce((a, b) => a * b, 1);
  if (!(data instanceof Float32Array) || data.length !== n)
    throw new RangeError(`generator.randn(${JSON.stringify(shape)}) must return a Float32Array of ${n} values`);
  return data;
}

export function latentsFromOption(op: string, v: Float32Array | Tensor, shape: number[], device: string): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (v instanceof Float32Array) {
    if (v.length !== n) throw new RangeError(`${op}: latents must hold [${shape.join(", ")}] = ${n} float32 values (NCHW), got ${v.length}`);
    return Tensor.fromArray(v, shape, { device });
  }
  if (v instanceof Tensor) {
    if (v.disposed) throw new TypeError(`${op}: latents is disposed`);
    if (v.ndim !== 4 || v.shape.some((d, i) => d !== shape[i]))
      throw new RangeError(`${op}: latents must have shape [${shape.join(", ")}], got [${v.shape.join(", ")}]`);
    return v.to(device, "float32");
  }
  throw new TypeError(`${op}: latents must be a Float32Array or a Tensor`);
}

// ---------------------------------------------------------------------------------------------
// stage 4: the denoising loop

/**
 * diffusers' rescale_noise_cfg (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
 * Steps are Flawed", §3.4): rescale the guided prediction to the text prediction's per-sample std
 * (unbiased, over C,H,W), then mix by phi.
 */
export function rescaleNoiseCfg(guided: Tensor, text: Tensor, phi: number): Tensor {
  const std = (x: Tensor) => {
    const n = x.numel / x.shape[0];
    const d = ops.sub(x, ops.mean(x, [1, 2, 3], true));
    return ops.sqrt(ops.div(ops.sum(ops.square(d), [1, 2, 3], true), n - 1));
  };
  const rescaled = ops.mul(guided, ops.div(std(text), std(guided)));
  return ops.axpby(phi, rescaled, 1 - phi, guided);
}

export interface DenoiseInput {
  scheduler: Scheduler;
  /** The timesteps to run (the whole schedule, or img2img's tail). */
  timesteps: readonly number[];
  /** The conditioning from stage 2. */
  cond: Conditioning;
  /**
   * Channels concatenated after the scaled latents for the U-Net (an inpainting U-Net's mask and
   * masked-image latents), already batched as the U-Net input is (doubled under CFG).
   */
  conditioning?: Tensor;
  /** Runs after step i on its result and returns the latents to go on with (4-channel inpainting's blend). */
  afterStep?: (latents: Tensor, i: number) => Tensor;
  /** ControlNet guidance (controlnet.ts). */
  control?: readonly ResolvedControl[];
}

/**
 * Runs the loop; takes ownership of `latents` (float32 NCHW on the device) and returns the final
 * latents (owned by the caller). Each step is one U-Net call on the whole batch (doubled under
 * CFG) with that step's conditioning, guidance in float32 and the sampler step; the loop then
 * waits for the previous step to finish: the working set stays two steps, onStep sees finished
 * values, and an abort is noticed between steps.
 */
export async function denoise(pipe: StableDiffusionPipeline, run: ResolvedRun, input: DenoiseInput, latents: Tensor): Promise<Tensor> {
  const { scheduler, timesteps, conditioning, afterStep, control } = input;
  const unetDtype = pipe.dtype;
  const total = timesteps.length;
  let current = latents;
  // Step i is reported (onStep) once it has run, which is awaited only after step i+1 has been
  // enqueued: the device always has the next step queued instead of idling while JavaScript
  // prepares it (on an H100, ~0.3 ms of a 9 ms SD1.5 step). A reported step's latents stay alive
  // until its report.
  let pending: PendingStep | null = null;
  const report = async (p: PendingStep) => {
    await p.done;
    if (!run.onStep) return;
    const info: StepInfo = { step: p.step + 1, total, timestep: p.timestep, latents: p.latents };
    if (p.wantPreview) {
      const src = p.x0 ?? p.latents;
      info.previews = latentPreviews(await src.toFloat32Array(), src.shape);
      info.preview = info.previews[0];
    }
    await run.onStep(info);
  };
  try {
    for (let i = 0; i < total; i++) {
      throwIfAborted(run);
      const t = timesteps[i];
      const wantPreview = run.onStep !== undefined && run.previewEvery > 0 && ((i + 1) % run.previewEvery === 0 || i === total - 1);
      const x = current;
      const cond = conditioningAt(input.cond, i);
      const out = tidy(() => {
        const scaled = scheduler.scaleModelInput(run.cfgOn ? ops.concat([x, x], 0) : x, t);
        const toUnet = (v: Tensor) => (v.dtype === unetDtype ? v : v.to(pipe.device, unetDtype));
        const unetIn = toUnet(conditioning ? ops.concat([scaled, conditioning], 1) : scaled);
        let latentIn: Tensor | null = conditioning ? null : unetIn;  // cast once, only when a ControlNet needs it
        // ControlNet (on the latents alone, before an inpainting U-Net's extra channels): its residuals
        // go into an eager U-Net call; otherwise a replayed CUDA graph on CUDA (lib/models/unet-graph.ts)
        const residuals = control?.length
          ? controlResidualsAt(control, i, total, (c) => c.net.forward((latentIn ??= toUnet(scaled)), t, cond.context, c.image, { scale: c.scale, addedCond: cond.added })) : null;
        let eps = residuals
          ? pipe.unet.forward(unetIn, t, cond.context, { addedCond: cond.added, controlResiduals: residuals })
          : unetStep(pipe.unet, unetIn, t, cond.context, cond.added);
        if (eps.dtype !== "float32") eps = eps.to(pipe.device, "float32");
        if (run.cfgOn) {
          const [uncond, cond] = ops.chunk(eps, 2, 0);
          eps = ops.add(uncond, ops.mul(ops.sub(cond, uncond), run.cfg));  // eps_u + s·(eps_c − eps_u), as diffusers rounds it
          if (run.guidanceRescale > 0) eps = rescaleNoiseCfg(eps, cond, run.guidanceRescale);
        }
        const stepOpts = { generator: run.generator, eta: run.eta };
        if (!wantPreview) return { prev: scheduler.step(eps, t, x, stepOpts), x0: null as Tensor | null };
        const o = scheduler.stepOutput(eps, t, x, stepOpts);
        const x0 = o.denoised ?? o.predOriginalSample ?? null;
        return { prev: o.prevSample, x0: x0 && x0 !== o.prevSample ? x0 : null };
      });
      current = out.prev;
      if (!pending) x.dispose();  // the first step's input: no report needs it
      if (afterStep) {
        const stepped = current;
        try {
          current = tidy(() => afterStep(stepped, i));
        } catch (e) {
          out.x0?.dispose();
          throw e;
        }
        if (current !== stepped) stepped.dispose();
      }
      const done = synchronize(pipe.device);
      done.catch(() => {});  // awaited in report(); this only keeps an early exit from leaving it unhandled
      const previous = pending;
      pending = { step: i, timestep: t, latents: current, x0: out.x0, wantPreview, done };
      if (previous) {
        try {
          await report(previous);
        } finally {
          previous.x0?.dispose();
          previous.latents.dispose();  // = x, this step's input, now enqueued
        }
      }
    }
    if (pending) {
      const last = pending;
      pending = null;
      try {
        await report(last);
      } finally {
        last.x0?.dispose();
      }
    }
    throwIfAborted(run);
    return current;
  } catch (e) {
    if (pending && pending.latents !== current) pending.latents.dispose();
    pending?.x0?.dispose();
    current.dispose();
    throw e;
  }
}

interface PendingStep { step: number; timestep: number; latents: Tensor; x0: Tensor | null; wantPreview: boolean; done: Promise<void> }

// ---------------------------------------------------------------------------------------------
// stage 5: decode

/**
 * latents / scaling_factor -> VAE decoder -> images, one image at a time (bounded memory). The
 * latents stay owned by the caller.
 */
export async function decodeLatents(pipe: StableDiffusionPipeline, latents: Tensor, params?: (k: number) => ImageParameters, tiling?: VaeTilingOptions | null): Promise<DecodeResult> {
  const cfg = pipe.vae.config;
  if (latents.ndim !== 4 || latents.shape[1] !== cfg.latentChannels)
    throw new RangeError(`decodeLatents: latents must be [B, ${cfg.latentChannels}, h, w], got [${latents.shape.join(",")}]`);
  const [B, , h, w] = latents.shape;
  const f = cfg.scaleFactor, H = h * f, W = w * f;
  const decoded = new Float32Array(B * 3 * H * W), imageFloat = new Float32Array(B * H * W * 3);
  const rgb: Uint8Array[] = [];
  for (let b = 0; b < B; b++) {
    const z = tidy(() => {
      const zb = ops.div(ops.slice(latents, 0, b, b + 1), cfg.scalingFactor);
      return zb.dtype !== pipe.vaeDtype || zb.device !== pipe.device ? zb.to(pipe.device, pipe.vaeDtype) : zb;
    });
    try {
      // the pixels are computed where the image is (the GPU, when there is one)
      const x = tiling ? await tiledDecodeTensor(pipe.vae, z, tiling) : tidy(() => pipe.vae.decode(z));
      const px = await decodedPixels(x).finally(() => x.dispose());
      decoded.set(px.decoded, b * 3 * H * W);
      imageFloat.set(px.imageFloat, b * H * W * 3);
      rgb.push(px.rgb[0]);
    } finally {
      z.dispose();
    }
  }
  const images = rgb.map((data, k) => new GeneratedImage(W, H, data, params?.(k)));
  return { images, decoded, imageFloat, shape: [B, 3, H, W] };
}

/** The PNG parameters of image k of a run. */
export function imageParameters(pipe: StableDiffusionPipeline, run: ResolvedRun, width: number, height: number, extra: Record<string, string | number> = {}): (k: number) => ImageParameters {
  return (k) => {
    const e: Record<string, string | number> = {};
    if (run.clipSkip > 0) e["Clip skip"] = run.clipSkip + 1;  // A1111 counts "1" as no skip
    if (run.eta > 0 && run.sampler === "ddim") e["Eta"] = run.eta;
    if (run.guidanceRescale > 0) e["CFG rescale"] = run.guidanceRescale;
    if (pipe.loras.length) e["Lora"] = pipe.loras.map((l) => `${l.name}:${l.scale}`).join(", ");
    if (run.tiling) e["Tiling"] = "True";
    return {
      prompt: run.prompts[k], negativePrompt: run.cfgOn && run.negatives[k] ? run.negatives[k] : undefined,
      steps: run.steps, sampler: run.samplerDisplay, cfg: run.cfg, seed: run.seeds[k], width, height,
      model: pipe.modelName || undefined, extra: { ...extra, ...e },
    };
  };
}

// ---------------------------------------------------------------------------------------------

export async function textToImage(pipe: StableDiffusionPipeline, opts: GenerateOptions): Promise<GenerateResult> {
  pipe.assertLive("generate");
  const op = "generate";
  pipe.assertPlainUnet(op);

  // 1. defaults and validation
  const f = pipe.vaeScaleFactor;
  const width = checkSize(op, "width", opts.width ?? pipe.defaultSize.width, f);
  const height = checkSize(op, "height", opts.height ?? pipe.defaultSize.height, f);
  const run = resolveCommon(pipe, opts, op, GENERATE_KEYS);  // from here on the run's scheduler is freed in the finally below
  const shape = [run.total, pipe.unet.config.inChannels, height / f, width / f];
  const { scheduler } = run;
  let cond: Conditioning | null = null;
  let latents: Tensor | null = null;
  let control: ResolvedControl[] = [];
  let seamless = false;
  try {
    await enterSeamless(pipe, run.tiling, run.signal, () => abortError(op));
    seamless = true;
    const hires = resolveHires(op, opts.hires, run.steps);
    const variation = resolveVariation(op, opts.variation, opts.latents !== undefined || opts.generator !== undefined);
    const denoisingEnd = checkDenoisingFraction(op, "denoisingEnd", opts.denoisingEnd);
    if (denoisingEnd !== null && hires) throw new RangeError(`${op}: denoisingEnd leaves the last steps to another model; it does not combine with hires`);
    const outputType = checkOutputType(op, opts.outputType);
    if (opts.latents !== undefined) latents = latentsFromOption(op, opts.latents, shape, pipe.device);
    scheduler.setTimesteps(run.steps);
    throwIfAborted(run);

    // 2. encode prompt (+ negative prompt under CFG)
    const t0 = now();
    cond = await encodeStage(pipe, run, width, height, run.steps);
    const t1 = now();

    control = await resolveControls(pipe, op, opts.controlnet, width, height, run.cfgOn ? 2 * run.total : run.total);

    // 3. prepare latents: seeded CPU noise (unless given) x init_noise_sigma
    const drawn = () => (variation ? applyVariation(drawNoise(shape, run.generator), shape, variation) : drawNoise(shape, run.generator));
    const noise: Tensor = latents ?? Tensor.fromArray(drawn(), shape, { device: pipe.device });
    latents = ops.mul(noise, scheduler.initNoiseSigma);
    noise.dispose();

    // 4. denoising loop with classifier-free guidance
    const first = latents;
    latents = null;
    const timesteps = denoisingEnd === null ? scheduler.timesteps : timestepsUntil(scheduler.timesteps, denoisingEnd, scheduler.config.numTrainTimesteps);
    latents = await denoise(pipe, run, { scheduler, timesteps, cond, control }, first);
    let extra: Record<string, string | number> = {};
    const variationInfo = (k: number): Record<string, number> =>
      (variation && variation.strength > 0 ? { "Variation seed": variation.seed + k, "Variation seed strength": variation.strength } : {});
    if (hires) {
      // 4b. hires fix: upscale, then the second pass on the larger latents (hires-fix.ts)
      const size = hiresSize(width, height, hires.scale, f);
      const images = hires.upscale === "image" ? (await decodeLatents(pipe, latents, undefined, run.vaeTiling)).images : null;
      const start = await hiresStart(pipe, run, hires, latents, images, size.width, size.height);
      latents.dispose();
      latents = null;
      try {
        disposeConditioning(cond);
        cond = null;
        cond = await encodeStage(pipe, run, size.width, size.height, hires.steps);
        // ControlNet in the second pass too (as A1111's hires fix), its image resized to that size;
        // start/end are fractions of this pass's steps
        if (control.length) {
          disposeControls(control);
          control = [];
          control = await resolveControls(pipe, op, opts.controlnet, size.width, size.height, run.cfgOn ? 2 * run.total : run.total);
        }
        latents = await denoise(pipe, run, { scheduler: start.scheduler, timesteps: start.timesteps, cond, control }, start.latents);
      } finally {
        start.scheduler.dispose();
      }
      extra = { "Denoising strength": hires.strength, "Hires upscale": hires.scale, "Hires steps": hires.steps, "Hires upscaler": hires.upscale === "latent" ? "Latent" : "Image" };
    }
    const final = latents;
    const t2 = now();

    // 5. decode (or hand back the latents)
    if (outputType === "latent") return await latentResult(final, run, t1 - t0, t2 - t1);
    const params = imageParameters(pipe, run, width, height, extra);
    const { images } = await decodeLatents(pipe, final, (k) => { const p = params(k); return { ...p, extra: { ...p.extra, ...variationInfo(k) } }; }, run.vaeTiling);
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
