/**
 * Argument parsing shared by the commands: value parsers that reject bad input with one line
 * naming the option and what it accepts, and the model options every image command takes.
 */
import * as fs from "fs";
import * as path from "path";
import { Command, InvalidArgumentError, Option } from "commander";
import { SAMPLER_CHOICES } from "../pipelines/text-to-image";
import { PIPELINE_DTYPES } from "../pipelines/stable-diffusion";
import { BUILTIN_MODEL_DIR, builtinModelPath } from "../generate";

/** A mistake in the command line: reported as one line, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export function integer(min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\s*[+-]?\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`Expected an integer ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`}.`);
    return n;
  };
}

export function number(min: number, max = Infinity, { exclusiveMin = false } = {}): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isFinite(n) || n < min || (exclusiveMin && n === min) || n > max)
      throw new InvalidArgumentError(min === -Infinity && max === Infinity ? "Expected a finite number."
        : `Expected a number ${max === Infinity ? `${exclusiveMin ? ">" : ">="} ${min}` : `in ${exclusiveMin ? "(" : "["}${min}, ${max}]`}.`);
    return n;
  };
}

export interface Size {
  width: number;
  height: number;
}

/** "WxH" or "N" (square). */
export function parseSize(v: string): Size {
  const m = /^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$/.exec(v);
  const width = m ? Number(m[1]) : NaN;
  const height = m ? Number(m[2] ?? m[1]) : NaN;
  if (!(width > 0 && height > 0 && width <= 16384 && height <= 16384))
    throw new InvalidArgumentError("Expected WIDTHxHEIGHT in pixels (e.g. 512x512) or one number for a square.");
  return { width, height };
}

/** --lora FILE[:SCALE], repeatable: a trailing ":<number>" is the scale (default 1). */
export function collectLora(v: string, prev: { file: string; scale: number }[] = []): { file: string; scale: number }[] {
  const m = /^(.+):([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)$/i.exec(v);
  const [file, scale] = m ? [m[1], Number(m[2])] : [v, 1];
  if (file === "" || !Number.isFinite(scale)) throw new InvalidArgumentError("Expected FILE or FILE:SCALE (e.g. style.safetensors:0.8).");
  return [...prev, { file, scale }];
}

export function parseDevice(v: string): string {
  if (!/^(cpu|auto|cuda(:\d+)?)$/.test(v)) throw new InvalidArgumentError('Expected "cpu", "cuda", "cuda:N" or "auto".');
  return v;
}

/**
 * The VAE scale factor of a diffusers folder, read from vae/config.json without loading any weight
 * (2^(levels-1), as diffusers computes it), so a bad --size fails before a slow load. Null when
 * the model is not a folder or the config is unreadable; the size is then checked after loading.
 */
export function scaleFactorOf(modelPath: string): number | null {
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(modelPath, "vae", "config.json"), "utf8")) as { block_out_channels?: unknown };
    const levels = Array.isArray(cfg.block_out_channels) ? cfg.block_out_channels.length : 0;
    return levels > 0 ? 2 ** (levels - 1) : null;
  } catch {
    return null;
  }
}

/** Throws a UsageError unless both sides are multiples of the scale factor. */
export function checkSizeMultiple(size: Size, f: number): void {
  if (size.width % f === 0 && size.height % f === 0) return;
  const round = (x: number) => Math.max(f, Math.round(x / f) * f);
  throw new UsageError(
    `--size ${size.width}x${size.height}: width and height must be a multiple of ${f} (this model's VAE scale factor); try ${round(size.width)}x${round(size.height)}`,
  );
}

/** --model, or the built-in model; a UsageError when neither exists. */
export function resolveModel(model: string | undefined, tokenizer?: string): string {
  if (model !== undefined) {
    const full = path.resolve(model);
    if (!fs.existsSync(full)) throw new UsageError(`--model ${model}: no such file or folder`);
    const isFile = fs.statSync(full).isFile();
    if (isFile && !/\.safetensors$/i.test(full)) throw new UsageError(`--model ${model}: expected a diffusers model folder or a .safetensors checkpoint`);
    if (isFile && tokenizer === undefined)
      throw new UsageError(`--model ${model} is a single-file checkpoint, which has no tokenizer: pass --tokenizer DIR (the tokenizer/ folder of a diffusers copy of the same model family)`);
    return full;
  }
  const builtin = builtinModelPath();
  if (builtin === null)
    throw new UsageError(`no built-in model is installed (looked for ${BUILTIN_MODEL_DIR}); pass --model PATH (a diffusers folder or a .safetensors checkpoint)`);
  return builtin;
}

/** Options the image commands share. */
export interface ImageCommandOptions {
  negative?: string;
  steps?: number;
  cfg?: number;
  sampler?: string;
  seed?: number;
  size?: Size;
  num?: number;
  model?: string;
  tokenizer?: string;
  device?: string;
  dtype?: string;
  vaeDtype?: string;
  lora?: { file: string; scale: number }[];
  promptWeighting?: boolean;
  embedding?: string[];
  vaeTiling?: boolean;
  controlnet?: string;
  controlImage?: string;
  controlScale?: number;
  aestheticScore?: number;
  negativeAestheticScore?: number;
  tiling?: boolean;
  output: string;
  json?: boolean;
  quiet?: boolean;
  progress: boolean;
}

export function addImageOptions(cmd: Command): Command {
  return cmd
    .option("--negative <text>", "negative prompt (what to steer away from)")
    .option("-s, --steps <n>", "denoising steps (default: 30)", integer(1, 1000))
    .option("--cfg <scale>", "classifier-free guidance scale; <= 1 turns guidance off (default: 7.5)", number(0))
    .addOption(new Option("--sampler <name>", "sampler (default: dpm++2m-karras)").choices(SAMPLER_CHOICES))
    .option("--seed <n>", "seed of the first image; image k uses seed + k (default: random)", integer(0, 2 ** 53 - 1 - 256))
    .option("--size <WxH>", "image size in pixels, a multiple of the VAE scale factor (default: the model's native size)", parseSize)
    .option("--num <n>", "number of images (default: 1)", integer(1, 256))
    .option("-m, --model <path>", "diffusers model folder or .safetensors checkpoint (default: the built-in model)")
    .option("--tokenizer <dir>", "tokenizer folder, for a single-file checkpoint")
    .option("--device <device>", "cpu, cuda, cuda:N or auto (default: auto)", parseDevice)
    .addOption(new Option("--dtype <type>", "weights and activations precision (default: float16 on CUDA, float32 on CPU)").choices(PIPELINE_DTYPES))
    .addOption(new Option("--vae-dtype <type>", "VAE precision; auto follows diffusers (float32 for an fp16 VAE marked force_upcast); bfloat16 is the fast choice on a GPU (default: auto)").choices(["auto", ...PIPELINE_DTYPES]))
    .option("--controlnet <dir>", "a diffusers ControlNet folder (with --control-image)")
    .option("--control-image <file>", "the ControlNet's input image (edges, depth, pose...)")
    .option("--control-scale <s>", "ControlNet conditioning scale (default 1)", number(0))
    .option("--vae-tiling", "decode in overlapping tiles: the VAE's memory stays that of one tile at any image size")
    .option("--aesthetic-score <s>", "SDXL refiner: the aesthetic score it is conditioned on (default 6)", number(-Infinity))
    .option("--negative-aesthetic-score <s>", "SDXL refiner: the score of the negative prompt's rows (default 2.5)", number(-Infinity))
    .option("--prompt-weighting", "A1111-style (word:1.3), (word), [word], BREAK, prompts longer than 75 tokens, and prompt editing [from:to:when], [a|b]")
    .option("--embedding <file>", "load a textual-inversion embedding (.safetensors); its word is the file name (A1111) or the one in the file; repeatable", (v: string, prev: string[] = []) => [...prev, v])
    .option("--lora <file[:scale]>", "merge a LoRA (.safetensors, kohya or diffusers keys) at this scale (default 1); repeatable", collectLora)
    .option("-o, --output <file>", "output PNG; several images are numbered (out-1.png, out-2.png, ...)", "out.png")
    .option("--json", "print machine-readable results on stdout")
    .option("-q, --quiet", "no progress or status on stderr")
    .option("--no-progress", "no progress bar");
}
