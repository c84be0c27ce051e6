/**
 * loadPipeline: a Stable Diffusion 1.x / 2.x pipeline from a diffusers folder or from a
 * single-file `.safetensors` checkpoint (original LDM key names), or an SDXL base pipeline from
 * either (SDXL single files keep the two text encoders under conditioner.embedders.0 / .1).
 *
 * Single files carry weights only. Their configs come from the `configs` option or from the
 * copies of the SD1.5 / SD2.1 (768-v) configs in the package's `configs/` folder, chosen by what
 * the checkpoint holds (CLIP-L + 768-wide cross-attention: SD1; OpenCLIP-H + 1024: SD2). They have
 * no tokenizer files either: pass `tokenizer` (a folder with vocab.json and merges.txt).
 */
import * as fs from "fs";
import * as path from "path";
import { packageRoot } from "../native";
import { devices, resolveDevice } from "../devices";
import type { DType } from "../tensor";
import type { StateDictSource } from "../nn/module";
import type { LazyStateDict } from "../io/state-dict";
import { ModelFolder, openWeightsFile, readJsonObject, isPickleFile, pickleRefusal, type JsonObject } from "../io/model-folder";
import { CLIPTokenizer } from "../tokenizers/clip";
import { CLIPTextModel } from "../models/clip-text";
import { UNet2DConditionModel } from "../models/unet-2d-condition";
import { AutoencoderKL, renameLegacyVaeKey } from "../models/autoencoder-kl";
import { convertSingleFileToDiffusers, inspectSingleFile, isSdxlSingleFile, sdxlSingleFileSources } from "../models/single-file";
import { PIPELINE_DTYPES, StableDiffusionPipeline, type PipelineDType } from "./stable-diffusion";
import { checkKeys } from "./text-to-image";

/** Config objects for a single-file load (diffusers/transformers config.json contents). */
export interface PipelineConfigs {
  unet?: JsonObject;
  vae?: JsonObject;
  textEncoder?: JsonObject;
  /** SDXL: the second (projecting) text encoder's config. */
  textEncoder2?: JsonObject;
  scheduler?: JsonObject;
}

export interface LoadPipelineOptions {
  /** "auto" (default) picks CUDA when a GPU answers; "cuda:N" picks a GPU. */
  device?: "cpu" | "cuda" | "auto" | string;
  /** Weights and activations of the networks. Default float16 on CUDA, float32 on the CPU (bfloat16 works there too: vdpbf16ps where the CPU has AVX512_BF16). */
  dtype?: PipelineDType;
  /** diffusers folder: load `<weights>.<variant>.safetensors` (e.g. "fp16"). */
  variant?: string;
  /**
   * Single file: a folder in diffusers layout holding unet/, vae/, text_encoder/ and scheduler/
   * configs (tokenizer/ too, optionally), or config objects that replace the built-in ones.
   */
  configs?: string | PipelineConfigs;
  /** Single file: the tokenizer folder (vocab.json, merges.txt, ...). */
  tokenizer?: string;
  /**
   * The VAE's precision. "auto" (default) follows diffusers: the pipeline's dtype, except that an
   * fp16 VAE whose config says force_upcast decodes in float32 (and a CPU bfloat16 pipeline's VAE
   * runs in float32, faster there). "bfloat16" keeps float32's range at half the memory and, on a
   * GPU, tensor-core speed: an SD VAE that overflows in float16 decodes fine in it.
   */
  vaeDtype?: VaeDTypeOption;
}

export type VaeDTypeOption = "auto" | PipelineDType;
const VAE_DTYPES: readonly VaeDTypeOption[] = ["auto", ...PIPELINE_DTYPES];

const LOAD_KEYS = ["device", "dtype", "variant", "configs", "tokenizer", "vaeDtype"];
const SD_PIPELINES = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionPipelineSafe"];
const SDXL_PIPELINES = ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"];

/** Resolves and checks a device option. */
export function resolvePipelineDevice(op: string, device: unknown): string {
  const d = device ?? "auto";
  if (typeof d !== "string" || !/^(cpu|auto|cuda(:\d+)?)$/.test(d))
    throw new RangeError(`${op}: device must be one of "cpu", "cuda", "cuda:N", "auto", got ${JSON.stringify(d)}`);
  const resolved = resolveDevice(d);
  if (resolved.startsWith("cuda")) {
    const index = resolved === "cuda" ? 0 : Number(resolved.slice(5));
    const gpus = devices().filter((x) => x.type === "cuda");
    if (!gpus.some((g) => g.type === "cuda" && g.index === index))
      throw new Error(`${op}: device "${d}" was asked for, but ${gpus.length ? `only CUDA devices ${gpus.map((g) => g.type === "cuda" ? g.index : "").join(", ")} answered` : "no CUDA device answered (no GPU, no driver, or a CPU-only build)"}; use device "cpu" or "auto"`);
  }
  return resolved;
}

export function resolvePipelineDType(op: string, dtype: unknown, device: string): PipelineDType {
  if (dtype === undefined) return device === "cpu" ? "float32" : "float16";
  if (typeof dtype !== "string" || !PIPELINE_DTYPES.includes(dtype as PipelineDType))
    throw new RangeError(`${op}: dtype must be one of ${PIPELINE_DTYPES.map((x) => JSON.stringify(x)).join(", ")}, got ${JSON.stringify(dtype)}`);
  // The CPU kernels read and write float32 and bfloat16 only.
  if (device === "cpu" && dtype === "float16")
    throw new RangeError(`${op}: dtype "float16" is not supported on the CPU; use "bfloat16" (or "float32")`);
  return dtype as PipelineDType;
}

/** Checks a vaeDtype option; float16 is refused on the CPU, whose kernels have no float16. */
export function resolveVaeDType(op: string, v: unknown, device: string): VaeDTypeOption {
  if (v === undefined) return "auto";
  if (typeof v !== "string" || !VAE_DTYPES.includes(v as VaeDTypeOption))
    throw new RangeError(`${op}: vaeDtype must be one of ${VAE_DTYPES.map((x) => JSON.stringify(x)).join(", ")}, got ${JSON.stringify(v)}`);
  if (device === "cpu" && v === "float16")
    throw new RangeError(`${op}: vaeDtype "float16" is not supported on the CPU; use "bfloat16" or "float32"`);
  return v as VaeDTypeOption;
}

/**
 * The VAE's dtype: `requested` unless "auto". Auto: an fp16 VAE with force_upcast runs in float32
 * (diffusers upcasts it to decode). On the CPU a bfloat16 pipeline's VAE runs in float32 too: its
 * convolutions take the float32 Winograd path, which is both faster there (SD1.5 decode 5.6 s vs
 * 8.2 s) and exact, while bf16 Winograd's rounding would reach the pixels (see Conv2d.winogradBf16).
 */
export function vaeDTypeFor(vae: AutoencoderKL, dtype: PipelineDType, device: string, requested: VaeDTypeOption = "auto"): DType {
  if (requested !== "auto") return requested;
  if (dtype === "bfloat16" && device === "cpu") return "float32";
  return dtype === "float16" && vae.config.forceUpcast ? "float32" : dtype;
}

/** Modules built so far, disposed if a later component fails to load. */
class Built {
  private readonly items: { dispose(): void }[] = [];
  add<T extends { dispose(): void }>(m: T): T {
    this.items.push(m);
    return m;
  }
  disposeAll(): void {
    for (const m of this.items) m.dispose();
  }
}

function loadInto(m: { loadStateDict(s: StateDictSource, o: { dtype: DType; device: string }): void }, source: StateDictSource & { close?(): void }, dtype: DType, device: string): void {
  try {
    m.loadStateDict(source, { dtype, device });
  } finally {
    source.close?.();
  }
}

/**
 * Loads a Stable Diffusion 1.x / 2.x pipeline: a diffusers folder (model_index.json, unet/, vae/,
 * text_encoder/, tokenizer/, scheduler/) or a single-file `.safetensors` checkpoint.
 */
export async function loadPipeline(modelPath: string, opts: LoadPipelineOptions = {}): Promise<StableDiffusionPipeline> {
  const op = "loadPipeline";
  checkKeys(op, opts, LOAD_KEYS);
  if (typeof modelPath !== "string" || modelPath === "") throw new TypeError(`${op}: path must be a model folder or a .safetensors file`);
  const device = resolvePipelineDevice(op, opts.device);
  const dtype = resolvePipelineDType(op, opts.dtype, device);
  const vaeRequest = resolveVaeDType(op, opts.vaeDtype, device);
  const full = path.resolve(modelPath);
  if (!fs.existsSync(full)) throw new Error(`${op}: ${full} does not exist`);
  if (fs.statSync(full).isDirectory()) {
    if (opts.configs !== undefined || opts.tokenizer !== undefined)
      throw new RangeError(`${op}: the configs and tokenizer options are for single-file checkpoints; a diffusers folder has its own`);
    return loadFolder(full, device, dtype, vaeRequest, opts.variant);
  }
  if (opts.variant !== undefined) throw new RangeError(`${op}: variant is for diffusers folders, not single files`);
  if (isPickleFile(full)) throw pickleRefusal(full);
  return loadSingleFile(full, device, dtype, vaeRequest, opts);
}

async function loadFolder(dir: string, device: string, dtype: PipelineDType, vaeRequest: VaeDTypeOption, variant?: string): Promise<StableDiffusionPipeline> {
  const folder = ModelFolder.open(dir);
  const cls = folder.index.className;
  const xl = SDXL_PIPELINES.includes(cls);
  if (!SD_PIPELINES.includes(cls) && !xl)
    throw new Error(`loadPipeline: ${dir} is a ${cls}; loadPipeline loads Stable Diffusion 1.x/2.x and SDXL pipelines (${[...SD_PIPELINES, ...SDXL_PIPELINES].join(", ")})`);
  // the SDXL refiner: no first text encoder; its one encoder is the projecting text_encoder_2
  const refiner = xl && !folder.index.components.has("text_encoder");
  const expect = (name: string, classes: string[]) => {
    const c = folder.component(name);
    if (!classes.includes(c.className)) throw new Error(`loadPipeline: ${dir}: component "${name}" is a ${c.className}, expected ${classes.join(" or ")}`);
  };
  expect("unet", ["UNet2DConditionModel"]);
  expect("vae", ["AutoencoderKL"]);
  if (!refiner) {
    expect("text_encoder", ["CLIPTextModel"]);
    expect("tokenizer", ["CLIPTokenizer", "CLIPTokenizerFast"]);
  }
  if (xl) {
    expect("text_encoder_2", ["CLIPTextModelWithProjection"]);
    expect("tokenizer_2", ["CLIPTokenizer", "CLIPTokenizerFast"]);
  }

  const tokenizer = CLIPTokenizer.fromDirectory(folder.componentDir(refiner ? "tokenizer_2" : "tokenizer"));
  const tokenizer2 = xl && !refiner ? CLIPTokenizer.fromDirectory(folder.componentDir("tokenizer_2")) : undefined;
  const scheduler = folder.config("scheduler");
  const zeros = folder.index.options["force_zeros_for_empty_prompt"];
  const built = new Built();
  try {
    const first = refiner ? "text_encoder_2" : "text_encoder";
    const textEncoder = built.add(CLIPTextModel.fromConfig(folder.config(first), { withProjection: refiner }));
    loadInto(textEncoder, folder.weights(first, { variant }), dtype, device);
    await yieldToLoop();
    let textEncoder2: CLIPTextModel | undefined;
    if (xl && !refiner) {
      textEncoder2 = built.add(CLIPTextModel.fromConfig(folder.config("text_encoder_2"), { withProjection: true }));
      loadInto(textEncoder2, folder.weights("text_encoder_2", { variant }), dtype, device);
      await yieldToLoop();
    }
    const unet = built.add(new UNet2DConditionModel(folder.config("unet")));
    loadInto(unet, folder.weights("unet", { variant }), dtype, device);
    await yieldToLoop();
    const vae = built.add(new AutoencoderKL(folder.config("vae")));
    const vaeDtype = vaeDTypeFor(vae, dtype, device, vaeRequest);
    loadInto(vae, folder.weights("vae", { variant, mapKey: renameLegacyVaeKey }), vaeDtype, device);
    return new StableDiffusionPipeline({
      tokenizer, textEncoder, unet, vae, scheduler, device, dtype, vaeDtype, modelName: path.basename(dir),
      tokenizer2, textEncoder2, forceZerosForEmptyPrompt: typeof zeros === "boolean" ? zeros : true,
    });
  } catch (e) {
    built.disposeAll();
    throw e;
  }
}

export type SdConfigs = Required<Omit<PipelineConfigs, "textEncoder2">> & { textEncoder2?: JsonObject };

function readConfigFolder(dir: string): SdConfigs {
  const read = (sub: string, file: string) => readJsonObject(path.join(dir, sub, file), `${sub} config`);
  const te2 = path.join(dir, "text_encoder_2", "config.json");
  return {
    unet: read("unet", "config.json"),
    vae: read("vae", "config.json"),
    textEncoder: read("text_encoder", "config.json"),
    ...(fs.existsSync(te2) ? { textEncoder2: read("text_encoder_2", "config.json") } : {}),
    scheduler: read("scheduler", "scheduler_config.json"),
  };
}

/** The package's copy of the SD1.5, SD2.1 or SDXL base configs. */
export function builtinConfigDir(family: "sd1" | "sd2" | "sdxl"): string {
  return path.join(packageRoot, "configs", family === "sd1" ? "sd15" : family === "sd2" ? "sd21" : "sdxl");
}

/** A single-file checkpoint opened as diffusers-named component sources, with its configs and tokenizers. */
export interface SingleFileSources {
  configs: SdConfigs;
  tokenizer: CLIPTokenizer;
  /** SDXL: the second tokenizer. */
  tokenizer2?: CLIPTokenizer;
  xl: boolean;
  /** Values are read (and converted) when loaded. */
  sources: { unet: LazyStateDict; vae: LazyStateDict; textEncoder: LazyStateDict; textEncoder2?: LazyStateDict };
  close(): void;
}

/**
 * Opens a single-file checkpoint: picks its configs (given, or the package's for the family its
 * keys show; an inpainting conv_in sets in_channels) and tokenizer(s), and maps its keys to
 * diffusers names. Shared by loadPipeline and `diffusekit convert`.
 */
export function openSingleFile(op: string, file: string, opts: Pick<LoadPipelineOptions, "configs" | "tokenizer">): SingleFileSources {
  if (!file.toLowerCase().endsWith(".safetensors"))
    throw new Error(`${op}: ${file} is neither a folder nor a .safetensors checkpoint`);
  const tokenizerDir = opts.tokenizer ?? (typeof opts.configs === "string" && fs.existsSync(path.join(opts.configs, "tokenizer")) ? path.join(opts.configs, "tokenizer") : undefined);
  if (tokenizerDir === undefined)
    throw new Error(
      `${op}: ${path.basename(file)} is a single-file checkpoint, which has no tokenizer files: pass { tokenizer: "<folder with vocab.json and merges.txt>" } ` +
        `(the tokenizer/ folder of any diffusers copy of the same model family, e.g. stable-diffusion-v1-5/tokenizer; SD2.x needs its own, which pads with "!")`,
    );
  const tokenizer = CLIPTokenizer.fromDirectory(tokenizerDir);
  const source = openWeightsFile(file);
  try {
    // SDXL: the U-Net, VAE and first text encoder read as an SD file; the second encoder on its own
    const xl = isSdxlSingleFile(source.keys());
    const { main, second } = xl ? sdxlSingleFileSources(source) : { main: source, second: null };
    const info = inspectSingleFile(main);
    const family = xl ? "sdxl" : info.family;
    let configs: SdConfigs;
    if (typeof opts.configs === "string") {
      configs = readConfigFolder(path.resolve(opts.configs));
    } else {
      if (opts.configs !== undefined && (opts.configs === null || typeof opts.configs !== "object"))
        throw new TypeError(`${op}: configs must be a folder path or { unet, vae, textEncoder, textEncoder2, scheduler } config objects`);
      const given = opts.configs ?? {};
      const complete = given.unet && given.vae && given.textEncoder && given.scheduler && (!xl || given.textEncoder2);
      if (!complete && family === null)
        throw new Error(
          `${op}: ${path.basename(file)} is not recognised as SD 1.x or 2.x (text encoder: ${info.textEncoder ?? "none"}, ` +
            `cross-attention width: ${info.crossAttentionDim ?? "unknown"}); pass { configs: "<folder with unet/, vae/, text_encoder/, scheduler/ configs>" }`,
        );
      const base = complete ? ({} as SdConfigs) : readConfigFolder(builtinConfigDir(family!));
      configs = { ...base, ...Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) } as SdConfigs;
    }
    if (xl && !configs.textEncoder2) throw new Error(`${op}: ${path.basename(file)} is SDXL: its configs need text_encoder_2/config.json`);
    // An inpainting checkpoint's conv_in reads latents + mask + masked-image latents (9 channels):
    // unless a U-Net config object was given, the checkpoint says how many.
    const unetGiven = typeof opts.configs === "object" && opts.configs.unet !== undefined;
    if (!unetGiven && info.unetInChannels !== null && (configs.unet.in_channels ?? 4) !== info.unetInChannels)
      configs = { ...configs, unet: { ...configs.unet, in_channels: info.unetInChannels } };
    const conv = convertSingleFileToDiffusers(main, { unet: configs.unet, vae: configs.vae, textEncoder: configs.textEncoder }, xl ? { textEncoderFormat: "transformers" } : {});
    const conv2 = second ? convertSingleFileToDiffusers(second, { textEncoder: configs.textEncoder2 }, { textEncoderFormat: "openclip" }) : null;
    return {
      configs, tokenizer, xl, tokenizer2: xl ? secondTokenizer(tokenizerDir, opts.configs) : undefined,
      sources: { unet: conv.unet!, vae: conv.vae!, textEncoder: conv.textEncoder!, ...(conv2 ? { textEncoder2: conv2.textEncoder! } : {}) },
      close: () => source.close(),
    };
  } catch (e) {
    source.close();
    throw e;
  }
}

async function loadSingleFile(file: string, device: string, dtype: PipelineDType, vaeRequest: VaeDTypeOption, opts: LoadPipelineOptions): Promise<StableDiffusionPipeline> {
  const f = openSingleFile("loadPipeline", file, opts);
  const { configs, sources } = f;
  const built = new Built();
  try {
    const textEncoder = built.add(CLIPTextModel.fromConfig(configs.textEncoder));
    loadInto(textEncoder, sources.textEncoder, dtype, device);
    await yieldToLoop();
    let textEncoder2: CLIPTextModel | undefined;
    if (sources.textEncoder2) {
      textEncoder2 = built.add(CLIPTextModel.fromConfig(configs.textEncoder2!, { withProjection: true }));
      loadInto(textEncoder2, sources.textEncoder2, dtype, device);
      await yieldToLoop();
    }
    const unet = built.add(new UNet2DConditionModel(configs.unet));
    loadInto(unet, sources.unet, dtype, device);
    await yieldToLoop();
    const vae = built.add(new AutoencoderKL(configs.vae));
    const vaeDtype = vaeDTypeFor(vae, dtype, device, vaeRequest);
    loadInto(vae, sources.vae, vaeDtype, device);
    return new StableDiffusionPipeline({
      tokenizer: f.tokenizer, textEncoder, unet, vae, scheduler: configs.scheduler, device, dtype, vaeDtype,
      modelName: path.basename(file).replace(/\.safetensors$/i, ""), tokenizer2: f.tokenizer2, textEncoder2,
    });
  } catch (e) {
    built.disposeAll();
    throw e;
  } finally {
    f.close();
  }
}

/**
 * SDXL's second tokenizer: the configs folder's tokenizer_2/ when there is one, else the first
 * tokenizer's vocabulary padded with "!" (id 0), as SDXL's tokenizer_2 is.
 */
function secondTokenizer(tokenizerDir: string, configs: LoadPipelineOptions["configs"]): CLIPTokenizer {
  const own = typeof configs === "string" ? path.join(configs, "tokenizer_2") : null;
  if (own && fs.existsSync(path.join(own, "vocab.json"))) return CLIPTokenizer.fromDirectory(own);
  return CLIPTokenizer.fromFiles(path.join(tokenizerDir, "vocab.json"), path.join(tokenizerDir, "merges.txt"), { padToken: "!" });
}

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));
