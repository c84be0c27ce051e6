/**
 * Sample images while training (diffusers' --validation_prompt): every `every` steps and at the
 * end, the model as it is now (LoRA branches and textual-inversion rows included, the non-EMA
 * weights) draws each prompt with a fixed seed into OUT/samples/step-<step>-<k>.png, so runs can
 * be compared step by step. The trainer's own modules are used, not copied: a pipeline is put
 * around them (and not disposed), recording is off while it draws, and the U-Net's captured CUDA
 * graphs are released afterwards (training changes the parameters they read).
 */
import * as fs from "fs";
import * as path from "path";
import { isGradEnabled, setGradEnabled } from "../autograd";
import type { CLIPTextModel } from "../models/clip-text";
import type { AutoencoderKL } from "../models/autoencoder-kl";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import { releaseUNetGraphs } from "../models/unet-graph";
import { StableDiffusionPipeline } from "../pipelines/stable-diffusion";
import { SAMPLER_CHOICES } from "../pipelines/text-to-image";
import type { CLIPTokenizer } from "../tokenizers/clip";
import { checkGroupKeys } from "./loop";

export interface TrainSampleOptions {
  /** What to draw (each one image per sampling). */
  prompts: string[];
  /** Draw every this many steps (and after the last). */
  every: number;
  /** Denoising steps. Default 20. */
  steps?: number;
  /** Guidance scale. Default 5. */
  cfg?: number;
  /** Seed of every prompt's image (the same each time, so the images show the training). Default 0. */
  seed?: number;
  /** Sampler. Default "euler". */
  sampler?: string;
}

export type ResolvedSamples = Required<TrainSampleOptions>;

export function resolveSamples(op: string, v: unknown): ResolvedSamples | null {
  if (v === undefined) return null;
  if (v === null || typeof v !== "object") throw new TypeError(`${op}: samples must be { prompts, every, steps?, cfg?, seed?, sampler? }`);
  const o = v as Record<string, unknown>;
  checkGroupKeys(op, "samples", o, ["prompts", "every", "steps", "cfg", "seed", "sampler"]);
  if (!Array.isArray(o.prompts) || o.prompts.length === 0 || o.prompts.length > 64 || o.prompts.some((p) => typeof p !== "string"))
    throw new TypeError(`${op}: samples.prompts must be 1 to 64 strings`);
  const int = (name: string, x: unknown, d: number, min: number, max: number) => {
    const n = x ?? d;
    if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) throw new RangeError(`${op}: samples.${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(x)}`);
    return n;
  };
  const cfg = o.cfg ?? 5;
  if (typeof cfg !== "number" || !(cfg >= 0) || !Number.isFinite(cfg)) throw new RangeError(`${op}: samples.cfg must be a number >= 0, got ${JSON.stringify(o.cfg)}`);
  const sampler = o.sampler ?? "euler";
  if (typeof sampler !== "string" || !SAMPLER_CHOICES.includes(sampler)) throw new RangeError(`${op}: samples.sampler must be one of ${SAMPLER_CHOICES.join(", ")}, got ${JSON.stringify(o.sampler)}`);
  return {
    prompts: [...(o.prompts as string[])], every: int("every", o.every, NaN, 1, Number.MAX_SAFE_INTEGER), steps: int("steps", o.steps, 20, 1, 1000),
    cfg, seed: int("seed", o.seed, 0, 0, 2 ** 32), sampler,
  };
}

export interface SampleModels {
  unet: UNet2DConditionModel;
  vae: AutoencoderKL;
  tokenizer: CLIPTokenizer;
  textEncoder: CLIPTextModel;
  tokenizer2?: CLIPTokenizer;
  textEncoder2?: CLIPTextModel;
  scheduler: Readonly<Record<string, unknown>>;
  device: string;
  forceZerosForEmptyPrompt?: boolean;
}

/** Whether step `step` of `steps` draws samples. */
export function samplesDue(s: ResolvedSamples | null, step: number, steps: number): boolean {
  return s !== null && (step % s.every === 0 || step === steps);
}

/** Draws the prompts at `resolution` with the models as they are; returns the PNG paths. */
export async function writeSamples(s: ResolvedSamples, m: SampleModels, out: string, step: number, resolution: number): Promise<string[]> {
  const dir = path.join(out, "samples");
  fs.mkdirSync(dir, { recursive: true });
  const pipe = new StableDiffusionPipeline({ ...m, dtype: "float32", vaeDtype: "float32", modelName: path.basename(out) });
  const wasRecording = isGradEnabled();
  setGradEnabled(false);
  const files: string[] = [];
  try {
    for (const [k, prompt] of s.prompts.entries()) {
      const r = await pipe.generate({ prompt, steps: s.steps, cfg: s.cfg, seed: s.seed, sampler: s.sampler as never, width: resolution, height: resolution });
      const file = path.join(dir, `step-${String(step).padStart(6, "0")}-${k}.png`);
      await r.images[0].savePNG(file);
      files.push(file);
    }
  } finally {
    setGradEnabled(wasRecording);
    releaseUNetGraphs(m.unet);
  }
  return files;
}
