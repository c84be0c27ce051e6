/**
 * diffusers model folders: `model_index.json` names the components (`"unet": ["diffusers",
 * "UNet2DConditionModel"]`), each in a subfolder with its `config.json` (`scheduler_config.json`
 * for schedulers) and weights:
 *
 *   diffusers components      diffusion_pytorch_model[.<variant>].safetensors
 *   transformers components   model[.<variant>].safetensors
 *   sharded (either)          <name>.safetensors.index[.<variant>].json + the shards it lists
 *
 * Only safetensors are read. Pickle checkpoints (.bin, .ckpt, .pt, .pth) are refused: unpickling
 * runs arbitrary code from the file.
 */
import * as fs from "fs";
import * as path from "path";
import { SafetensorsStateDict, type SafetensorsStateDictOptions } from "./state-dict";

export type JsonObject = Record<string, unknown>;

const PICKLE_EXTENSIONS = [".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"];

/** The error for a pickle checkpoint, naming the file and how to convert it. */
export function pickleRefusal(file: string): Error {
  return new Error(
    `${file}: pickle checkpoints (.bin/.ckpt/.pt/.pth) are not loaded, because unpickling can execute ` +
      `arbitrary code embedded in the file. Convert it to safetensors first, e.g. in Python with diffusers: ` +
      `DiffusionPipeline.from_pretrained(folder).save_pretrained(out, safe_serialization=True) ` +
      `(or model.save_pretrained(out, safe_serialization=True) for one component; ` +
      `safetensors.torch.save_file(state_dict, "model.safetensors") for a single-file checkpoint).`,
  );
}

export function isPickleFile(file: string): boolean {
  const lower = file.toLowerCase();
  return PICKLE_EXTENSIONS.some((e) => lower.endsWith(e)) || /\.bin\.index(\.[^.]+)?\.json$/.test(lower);
}

/**
 * Opens a single weights file (or a shard index) as a state dict. Pickle files are refused, by
 * name and by content: a zip archive (torch.save's format) or a raw pickle stream renamed to
 * `.safetensors` gets the same explanation instead of a header parse error.
 */
export function openWeightsFile(file: string, opts: SafetensorsStateDictOptions = {}): SafetensorsStateDict {
  if (isPickleFile(file)) throw pickleRefusal(file);
  if (!fs.existsSync(file)) throw new Error(`weights file not found: ${file}`);
  if (!file.endsWith(".json")) {
    const fd = fs.openSync(file, "r");
    const head = Buffer.alloc(4);
    try {
      fs.readSync(fd, head, 0, 4, 0);
    } finally {
      fs.closeSync(fd);
    }
    const zip = head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
    const pickle = head[0] === 0x80 && head[1] >= 2 && head[1] <= 5;
    if (zip || pickle) throw pickleRefusal(file);
  }
  return SafetensorsStateDict.open(file, opts);
}

/** Reads a JSON object file with errors that say which file and what is wrong. */
export function readJsonObject(file: string, what = "JSON file"): JsonObject {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(code === "ENOENT" ? `${what} not found: ${file}` : `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} ${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error(`${what} ${file} must hold a JSON object`);
  return parsed as JsonObject;
}

// ---- weights lookup

export interface WeightsOptions {
  /** Loads `<name>.<variant>.safetensors` (e.g. "fp16") instead of `<name>.safetensors`. */
  variant?: string;
}

export interface WeightsLocation {
  /** A single .safetensors file, or the shard index .json. */
  file: string;
  sharded: boolean;
  variant: string | null;
}

const WEIGHT_BASENAMES = ["diffusion_pytorch_model", "model"];

/** A component's weights file as save_pretrained names it: `<base>.safetensors`, or `<base>.<variant>.safetensors`. */
export function weightsFileName(base: string, variant?: string | null): string {
  return variantNames(base, variant ?? null).single;
}

function variantNames(base: string, variant: string | null): { single: string; indexes: string[] } {
  if (variant === null) return { single: `${base}.safetensors`, indexes: [`${base}.safetensors.index.json`] };
  // diffusers/transformers put the variant before the last suffix ("...index.fp16.json"); some
  // hand-made folders use "<base>.fp16.safetensors.index.json".
  return {
    single: `${base}.${variant}.safetensors`,
    indexes: [`${base}.safetensors.index.${variant}.json`, `${base}.${variant}.safetensors.index.json`],
  };
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/**
 * Finds a component's safetensors weights. Errors explain what was looked for and what is there:
 * a missing variant, only pickle files, or nothing at all.
 */
export function findWeights(componentDir: string, opts: WeightsOptions = {}): WeightsLocation {
  const variant = opts.variant ?? null;
  if (variant !== null && !/^[A-Za-z0-9_-]+$/.test(variant))
    throw new RangeError(`variant must be a plain name such as "fp16", got ${JSON.stringify(variant)}`);
  if (!fs.existsSync(componentDir) || !fs.statSync(componentDir).isDirectory())
    throw new Error(`model folder component not found: ${componentDir} is not a directory`);
  const present = new Set(listDir(componentDir));
  const looked: string[] = [];
  for (const base of WEIGHT_BASENAMES) {
    const names = variantNames(base, variant);
    looked.push(names.single, ...names.indexes);
    if (present.has(names.single)) return { file: path.join(componentDir, names.single), sharded: false, variant };
    for (const idx of names.indexes)
      if (present.has(idx)) return { file: path.join(componentDir, idx), sharded: true, variant };
  }
  const files = [...present];
  const pickles = files.filter(isPickleFile);
  if (variant !== null) {
    const plain = WEIGHT_BASENAMES.map((b) => variantNames(b, null)).flatMap((n) => [n.single, ...n.indexes]).filter((n) => present.has(n));
    if (plain.length)
      throw new Error(`${componentDir}: no "${variant}" variant weights (looked for ${looked.join(", ")}); ` +
        `the folder has ${plain.join(", ")}: leave out the variant option to load them`);
  } else {
    const variants = files.filter((f) => /^(diffusion_pytorch_model|model)\.[A-Za-z0-9_-]+\.safetensors$/.test(f));
    if (variants.length) {
      const names = [...new Set(variants.map((f) => f.split(".")[1]))];
      throw new Error(`${componentDir}: no diffusion_pytorch_model.safetensors or model.safetensors, but variant weights exist ` +
        `(${variants.join(", ")}): pass { variant: ${JSON.stringify(names[0])} }`);
    }
  }
  if (pickles.length) throw pickleRefusal(path.join(componentDir, pickles[0]));
  throw new Error(`${componentDir}: no weights found (looked for ${looked.join(", ")}; the folder has ${files.length ? files.join(", ") : "no files"})`);
}

// ---- model_index.json

export interface ModelIndexFields {
  /** The scheduler's class (scheduler_config.json's _class_name). */
  schedulerClass: string;
  /** SDXL: a second text encoder with projection and a second tokenizer. */
  xl?: boolean;
  /** A 9-channel inpainting U-Net. */
  inpainting?: boolean;
  /** SDXL's force_zeros_for_empty_prompt. */
  forceZerosForEmptyPrompt?: boolean;
}

/** The model_index.json diffusers writes for a Stable Diffusion (or SDXL) pipeline without a safety checker. */
export function stableDiffusionModelIndex(f: ModelIndexFields): JsonObject {
  const family = f.xl ? "StableDiffusionXL" : "StableDiffusion";
  return {
    _class_name: `${family}${f.inpainting ? "Inpaint" : ""}Pipeline`,
    _diffusers_version: "0.27.2",
    feature_extractor: [null, null],
    image_encoder: [null, null],
    ...(f.xl ? { force_zeros_for_empty_prompt: f.forceZerosForEmptyPrompt ?? true } : { requires_safety_checker: false, safety_checker: [null, null] }),
    scheduler: ["diffusers", f.schedulerClass],
    text_encoder: ["transformers", "CLIPTextModel"],
    ...(f.xl ? { text_encoder_2: ["transformers", "CLIPTextModelWithProjection"] } : {}),
    tokenizer: ["transformers", "CLIPTokenizer"],
    ...(f.xl ? { tokenizer_2: ["transformers", "CLIPTokenizer"] } : {}),
    unet: ["diffusers", "UNet2DConditionModel"],
    vae: ["diffusers", "AutoencoderKL"],
  };
}

export interface ComponentEntry {
  name: string;
  /** "diffusers", "transformers", ... */
  library: string;
  className: string;
}

export interface ModelIndex {
  /** The pipeline class, e.g. "StableDiffusionPipeline". */
  className: string;
  diffusersVersion: string | null;
  /** Components with a class; `[null, null]` entries (absent safety checker...) are left out. */
  components: Map<string, ComponentEntry>;
  /** Components listed as `[null, null]`. */
  absent: string[];
  /** Other keys (requires_safety_checker, force_zeros_for_empty_prompt...). */
  options: JsonObject;
  raw: JsonObject;
}

export function parseModelIndex(raw: JsonObject, file = "model_index.json"): ModelIndex {
  const className = raw["_class_name"];
  if (typeof className !== "string") throw new Error(`${file}: "_class_name" must name the pipeline class`);
  const components = new Map<string, ComponentEntry>();
  const absent: string[] = [];
  const options: JsonObject = {};
  for (const [k, v] of Object.entries(raw)) {
    if (k.startsWith("_")) continue;
    if (Array.isArray(v)) {
      if (v.length !== 2) throw new Error(`${file}: "${k}" must be [library, class], got ${JSON.stringify(v)}`);
      const [lib, cls] = v;
      if (lib === null && cls === null) { absent.push(k); continue; }
      if (typeof lib !== "string" || typeof cls !== "string")
        throw new Error(`${file}: "${k}" must be [library, class] strings or [null, null], got ${JSON.stringify(v)}`);
      components.set(k, { name: k, library: lib, className: cls });
    } else {
      options[k] = v;
    }
  }
  const version = raw["_diffusers_version"];
  return { className, diffusersVersion: typeof version === "string" ? version : null, components, absent, options, raw };
}

/** A diffusers pipeline folder. */
export class ModelFolder {
  private constructor(readonly dir: string, readonly index: ModelIndex) {}

  /** Reads `<dir>/model_index.json`; components are checked when they are used. */
  static open(dir: string): ModelFolder {
    const root = path.resolve(dir);
    if (!fs.existsSync(root)) throw new Error(`model folder not found: ${root}`);
    if (!fs.statSync(root).isDirectory()) {
      if (isPickleFile(root)) throw pickleRefusal(root);
      const hint = root.endsWith(".safetensors") ? " (a single-file checkpoint: see lib/models/single-file.ts)" : "";
      throw new Error(`model folder ${root} is not a directory${hint}`);
    }
    const indexFile = path.join(root, "model_index.json");
    if (!fs.existsSync(indexFile))
      throw new Error(`${root} has no model_index.json: not a diffusers pipeline folder ` +
        `(the folder has ${listDir(root).slice(0, 12).join(", ") || "no files"})`);
    return new ModelFolder(root, parseModelIndex(readJsonObject(indexFile, "model_index.json"), indexFile));
  }

  /** True when model_index.json lists the component with a class. */
  has(name: string): boolean {
    return this.index.components.has(name);
  }

  component(name: string): ComponentEntry {
    const c = this.index.components.get(name);
    if (c) return c;
    if (this.index.absent.includes(name)) throw new Error(`${this.dir}: component "${name}" is [null, null] in model_index.json (not part of this pipeline)`);
    throw new Error(`${this.dir}: model_index.json has no component "${name}" (it lists ${[...this.index.components.keys()].join(", ")})`);
  }

  /** The component's subfolder (which must exist). */
  componentDir(name: string): string {
    this.component(name);
    const dir = path.join(this.dir, name);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
      throw new Error(`${this.dir}: component "${name}" is listed in model_index.json but the folder ${dir} is missing`);
    return dir;
  }

  /** Path of the component's config file: scheduler_config.json for schedulers, tokenizer_config.json for tokenizers, else config.json. */
  configPath(name: string): string {
    const c = this.component(name);
    const file = /Scheduler$/.test(c.className) ? "scheduler_config.json" : /Tokenizer(Fast)?$/.test(c.className) ? "tokenizer_config.json" : "config.json";
    return path.join(this.componentDir(name), file);
  }

  /** The component's parsed config. */
  config(name: string): JsonObject {
    return readJsonObject(this.configPath(name), `${name} config`);
  }

  /** Where the component's weights are (see findWeights). */
  weightsLocation(name: string, opts: WeightsOptions = {}): WeightsLocation {
    return findWeights(this.componentDir(name), opts);
  }

  /** The component's weights as a state-dict source (close it after loading). */
  weights(name: string, opts: WeightsOptions & SafetensorsStateDictOptions = {}): SafetensorsStateDict {
    const loc = this.weightsLocation(name, opts);
    return openWeightsFile(loc.file, { stripPrefix: opts.stripPrefix, mapKey: opts.mapKey });
  }
}
