/**
 * savePipeline / pipe.save: a loaded pipeline written back to disk, with whatever was applied to it
 * (merged LoRAs, textual-inversion words), as
 *
 *   a diffusers folder      model_index.json, scheduler/, tokenizer/, text_encoder/, unet/, vae/
 *                           (+ text_encoder_2/, tokenizer_2/ for SDXL), as save_pretrained writes it
 *   a single .safetensors   the original (LDM) key names, as A1111 / ComfyUI / sd.cpp read them
 *
 * so that a single-file checkpoint becomes a folder `train({ init })` starts from, and a folder a
 * single file. Tensors are converted and written one at a time (see lib/io/module-weights.ts).
 */
import * as fs from "fs";
import * as path from "path";
import type { Module } from "../nn/module";
import { stableDiffusionModelIndex, weightsFileName, type JsonObject } from "../io/model-folder";
import { SAVE_DTYPES, writeModuleComponent, type SaveDType } from "../io/module-weights";
import { writeTokenizerFiles, tokenizerFiles } from "../tokenizers/clip-files";
import { writeJsonFile } from "../io/files";
import type { TextEncoderFormat } from "../models/single-file";
import type { StableDiffusionPipeline } from "./stable-diffusion";
import { folderToSingleFile } from "./convert-files";
import { checkKeys } from "./text-to-image";

export interface SavePipelineOptions {
  /** The weights' dtype in the files. Default: the pipeline's dtype. */
  dtype?: SaveDType;
  /** diffusers folder: write `<weights>.<variant>.safetensors` (e.g. "fp16"), as save_pretrained(variant=...). */
  variant?: string;
  /**
   * Single file, SD 1.x/2.x: the text encoder's key names. Default: OpenCLIP names (SD 2.x) for a
   * 1024-wide text encoder, transformers names (SD 1.x) otherwise. SDXL files always hold both.
   */
  textEncoderFormat?: TextEncoderFormat;
}

const SAVE_KEYS = ["dtype", "variant", "textEncoderFormat"];

/** Writes `pipe` to `target`: a .safetensors path gets a single file, anything else a diffusers folder. */
export async function savePipeline(pipe: StableDiffusionPipeline, target: string, opts: SavePipelineOptions = {}): Promise<string> {
  const op = "save";
  checkKeys(op, opts, SAVE_KEYS);
  if (typeof target !== "string" || target === "") throw new TypeError(`${op}: the target must be a folder or a .safetensors file path`);
  if (pipe.isRefiner) throw new Error(`${op}: saving the SDXL refiner is not supported`);
  const dtype = opts.dtype ?? pipe.dtype;
  if (!SAVE_DTYPES.includes(dtype)) throw new RangeError(`${op}: dtype must be one of ${SAVE_DTYPES.map((d) => JSON.stringify(d)).join(", ")}, got ${JSON.stringify(dtype)}`);
  const full = path.resolve(target);
  if (full.toLowerCase().endsWith(".safetensors")) {
    if (opts.variant !== undefined) throw new RangeError(`${op}: variant names a diffusers folder's weight files; a single file has none`);
    await saveSingleFile(pipe, full, dtype, opts.textEncoderFormat);
  } else {
    if (opts.textEncoderFormat !== undefined) throw new RangeError(`${op}: textEncoderFormat is for single files; a diffusers folder uses transformers names`);
    if (opts.variant !== undefined && (typeof opts.variant !== "string" || !/^[A-Za-z0-9_-]+$/.test(opts.variant)))
      throw new RangeError(`${op}: variant must be letters, digits, "_" or "-" (e.g. "fp16"), got ${JSON.stringify(opts.variant)}`);
    await saveFolder(pipe, full, dtype, opts.variant);
  }
  return full;
}

/** Refuses a target that would overwrite something other than a pipeline folder. */
export function prepareFolder(dir: string): void {
  if (fs.existsSync(dir)) {
    if (!fs.statSync(dir).isDirectory()) throw new Error(`save: ${dir} exists and is not a folder`);
    const entries = fs.readdirSync(dir);
    if (entries.length && !entries.includes("model_index.json"))
      throw new Error(`save: ${dir} is a non-empty folder that is not a diffusers pipeline (no model_index.json); choose an empty or new folder`);
  }
  fs.mkdirSync(dir, { recursive: true });
}

/** A component's config and weights, the weights file named for the variant (save_pretrained's `<base>.<variant>.safetensors`). */
function writeComponent(dir: string, config: JsonObject, base: string, module: Module, dtype: SaveDType, variant?: string): Promise<void> {
  return writeModuleComponent(dir, config, weightsFileName(base, variant), module, { dtype });
}

/** A text encoder's config.json, its vocab_size following the embedding table (grown by textual inversion). */
function textEncoderConfig(pipe: StableDiffusionPipeline, second: boolean, dtype: SaveDType): JsonObject {
  const te = second ? pipe.textEncoder2! : pipe.textEncoder;
  if (!te.configJson) throw new Error("save: the text encoder was built without a config.json object, so its config cannot be written");
  const rows = te.textModel.embeddings.tokenEmbedding.count;
  return { ...te.configJson, architectures: [second ? "CLIPTextModelWithProjection" : "CLIPTextModel"], torch_dtype: dtype, vocab_size: rows };
}

function schedulerConfig(pipe: StableDiffusionPipeline): JsonObject {
  const cls = pipe.defaultSchedulerClass;
  if (!cls) throw new Error(`save: the pipeline's scheduler config has no _class_name, so model_index.json cannot name it`);
  return { ...pipe.scheduler };
}

async function saveFolder(pipe: StableDiffusionPipeline, dir: string, dtype: SaveDType, variant?: string): Promise<void> {
  prepareFolder(dir);
  const xl = pipe.isXL;
  const scheduler = schedulerConfig(pipe);
  writeJsonFile(path.join(dir, "scheduler", "scheduler_config.json"), scheduler);
  writeTokenizerFiles(path.join(dir, "tokenizer"), tokenizerFiles(pipe.tokenizer));
  await writeComponent(path.join(dir, "text_encoder"), textEncoderConfig(pipe, false, dtype), "model", pipe.textEncoder, dtype, variant);
  if (xl) {
    writeTokenizerFiles(path.join(dir, "tokenizer_2"), tokenizerFiles(pipe.tokenizer2!));
    await writeComponent(path.join(dir, "text_encoder_2"), textEncoderConfig(pipe, true, dtype), "model", pipe.textEncoder2!, dtype, variant);
  }
  await writeComponent(path.join(dir, "unet"), { _class_name: "UNet2DConditionModel", ...pipe.unet.configJson }, "diffusion_pytorch_model", pipe.unet, dtype, variant);
  await writeComponent(path.join(dir, "vae"), { _class_name: "AutoencoderKL", ...pipe.vae.configJson }, "diffusion_pytorch_model", pipe.vae, dtype, variant);
  // last: a folder without it is not taken for a pipeline, so an interrupted save is not loaded
  writeJsonFile(path.join(dir, "model_index.json"), stableDiffusionModelIndex({
    schedulerClass: scheduler["_class_name"] as string, xl, inpainting: pipe.isInpaintingModel, forceZerosForEmptyPrompt: pipe.forceZerosForEmptyPrompt,
  }));
}

/**
 * The single file is made from a diffusers folder: the pipeline is first written as one (next to
 * the target, removed after), which folderToSingleFile then reads tensor by tensor. This keeps
 * the host memory at one tensor, whatever device the pipeline is on.
 */
async function saveSingleFile(pipe: StableDiffusionPipeline, file: string, dtype: SaveDType, format?: TextEncoderFormat): Promise<void> {
  if (pipe.tokenizer.addedWords().length || pipe.tokenizer2?.addedWords().length)
    throw new Error(`save: the pipeline has textual-inversion words, which a single file cannot hold (it has no tokenizer); save a diffusers folder instead`);
  if (format !== undefined && format !== "transformers" && format !== "openclip")
    throw new RangeError(`save: textEncoderFormat must be "transformers" or "openclip", got ${JSON.stringify(format)}`);
  if (format !== undefined && pipe.isXL) throw new RangeError(`save: textEncoderFormat does not apply to SDXL, whose single files hold both formats`);
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) throw new Error(`save: ${file} is a folder`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const parts = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.parts`);
  fs.rmSync(parts, { recursive: true, force: true });
  try {
    await saveFolder(pipe, parts, dtype);
    await folderToSingleFile(parts, file, dtype, { textEncoderFormat: format });
  } finally {
    fs.rmSync(parts, { recursive: true, force: true });
  }
}
