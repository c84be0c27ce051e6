// train(): a text-to-image latent diffusion model trained on an image + caption dataset, written
// as a diffusers Stable Diffusion folder that loadPipeline() (and diffusers) load:
//
//   out/model_index.json, scheduler/scheduler_config.json, unet/, vae/, text_encoder/, tokenizer/
//   out/checkpoint/  (resumable state; see checkpoint.ts)
//
// Fine-tuning (`init`: a diffusers model folder, as train_text_to_image.py's
// --pretrained_model_name_or_path): the UNet is init's (config and weights), the VAE defaults to
// init's vae/, the text encoder and tokenizer to init's (frozen; textEncoder "train" fine-tunes
// them jointly), and the noise schedule is init's scheduler config (predictionType may override
// its prediction_type).
//
// Stages: 1 options, 2 data, 3 VAE (given, init's, or trained first into out/vae), 4 tokenizer and text
// encoder (trained jointly from scratch or from init, or a frozen one from a model folder), 5 latent cache (the
// VAE posterior of every image, and of its mirror image when flipping, computed once), 6 UNet and
// optimiser (+ resume), 7 the loop, 8 export. One optimiser step, as train_text_to_image.py:
// sample z ~ posterior · scaling_factor, t ~ U{0..T−1}, noise ~ N(0, I); x_t = add_noise; drop
// captions to "" with probability condDropout; loss = MSE(unet(x_t, t, text(captions)), target)
// (Min-SNR-γ weighted when snrGamma is set); backward; clip; AdamW; EMA.
import * as fs from "fs";
import * as path from "path";
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { backward, noGrad, releaseGraph } from "../autograd";
import { CLIPTextModel } from "../models/clip-text";
import { UNet2DConditionModel, type AddedCond, type UNet2DConditionConfigJson } from "../models/unet-2d-condition";
import { encodeTextsXL } from "../models/sdxl-text";
import { AutoencoderKL } from "../models/autoencoder-kl";
import { CLIPTokenizer } from "../tokenizers/clip";
import { ModelFolder, findWeights, openWeightsFile, readJsonObject, stableDiffusionModelIndex } from "../io/model-folder";
import type { StateDictSource } from "../nn/module";
import { noiseSchedule, parseSchedulerConfig } from "../schedulers/schedule";
import { AdamW, EMA, learningRateAt, LR_SCHEDULES, type LrScheduleName } from "./optim";
import { EpochSampler, imagesToNchw, sampleCaption, type TrainingDataset } from "./data";
import { addNoise, diffusionLoss, dropConditions, samplePosterior, TRAIN_PREDICTION_TYPES, type TrainPredictionType } from "./objectives";
import { Rng, mixSeed } from "./rng";
import { initParameters } from "./init";
import { MODEL_SIZES, schedulerConfig, textEncoderConfig, unetConfig, type ModelSize } from "./presets";
import {
  byteLevelTokenizerFiles, defaultTokenizerDir, readTokenizerFiles, tokenizerFromFiles, tokenizerIds, trimTokenizer,
  writeTokenizerFiles,
} from "./tokenizer";
import { LoraAdapters, type LoraTrainOptions } from "./lora-adapters";
import { TrainedEmbedding, checkCaptionsNameToken, resolveTextualInversion, type TextualInversionTrainOptions } from "./textual-inversion";
import { resolveSamples, samplesDue, writeSamples, type TrainSampleOptions } from "./samples";
import { CHECKPOINT_DIR, checkFixed, readCheckpointState, restoreCheckpoint, saveCheckpoint } from "./checkpoint";
import { writeModuleComponent } from "../io/module-weights";
import { writeJsonFile } from "../io/files";
import { isFinishedVae, loadVaeWeights, readVaeFolder, trainVae, type TrainVaeOptions, type TrainVaeResult } from "./vae-trainer";
import {
  ReadBehind, StopControl, Throughput, checkGroupKeys, checkKeys, finishStep, intOpt, mixedPrecisionDtype, numOpt, resolveData, trainingDevice, yieldToLoop,
  LOOP_KEYS, type DataOption, type LoopOptions, type TrainLogInfo,
} from "./loop";

export interface TrainOptions extends LoopOptions {
  /** A folder of images with captions (see data.ts), "shapes" / "shapes:N", or a TrainingDataset. */
  data: DataOption;
  /** Output folder (diffusers layout). */
  out: string;
  /**
   * Fine-tune this diffusers model folder (model_index.json, unet/, vae/, text_encoder/,
   * tokenizer/, scheduler/) instead of training a UNet from scratch: its UNet config and weights
   * (float16 weights are upcast), its VAE (unless `vae` is given), its text encoder and tokenizer
   * (frozen, unless `textEncoder` says otherwise) and its noise schedule. `model`,
   * `textEncoderSize`, `tokenizer`, `trimVocab`, `vaeSteps` and `vaeOptions` cannot be set with it.
   * The default lr is then 1e-4 (diffusers' train_text_to_image default) instead of 5e-4.
   */
  init?: string;
  /** UNet size: "small" (default), "base", or a UNet2DConditionModel config object. */
  model?: ModelSize | UNet2DConditionConfigJson;
  /**
   * "train": a CLIP text encoder trained jointly, from scratch (the default without `init`) or,
   * with `init`, starting from init's text encoder and tokenizer; or a diffusers model folder whose
   * text_encoder/ and tokenizer/ are used frozen (the default with `init`: init's own).
   */
  textEncoder?: "train" | string;
  /** Size of a text encoder trained from scratch: "small" (default), "base" or a CLIP text config object. */
  textEncoderSize?: ModelSize | Record<string, unknown>;
  /** CLIP tokenizer folder (vocab.json, merges.txt) for a text encoder trained from scratch. Default: the package's, else byte-level. */
  tokenizer?: string;
  /** Trim the vocabulary to what the captions use (default true; see tokenizer.ts). */
  trimVocab?: boolean;
  /** A trained VAE: a component folder (config.json + weights, as trainVae writes) or a model folder with vae/. Default: trained first into out/vae. */
  vae?: string;
  /** Steps of the VAE trained when `vae` is not given (default 1000). */
  vaeSteps?: number;
  /** Other trainVae options for that VAE. */
  vaeOptions?: Partial<Omit<TrainVaeOptions, "data" | "out" | "resolution" | "steps" | "resume" | "onLog" | "signal" | "handleSigint">>;
  /** Keep an EMA of the weights and export it: true (decay 0.9999, diffusers' EMAModel) or the decay. Default off. */
  ema?: boolean | number;
  /** The training target: "epsilon" (default), "v_prediction"; with `init`, default init's scheduler prediction_type. */
  predictionType?: TrainPredictionType;
  /** Min-SNR-γ loss weighting (e.g. 5). Default off. */
  snrGamma?: number | null;
  /** Probability of training a sample with the empty prompt (default 0.1). */
  condDropout?: number;
  /**
   * Train LoRA adapters instead of the whole U-Net (needs `init`; the text encoder stays frozen):
   * true (rank 4, alpha = rank) or { rank, alpha }. The result is out/lora.safetensors (kohya
   * format, for loadLora / A1111 / stable-diffusion.cpp) instead of a model folder.
   */
  lora?: boolean | LoraTrainOptions;
  /**
   * Textual inversion (needs `init`; everything else stays frozen): trains the embedding of a new
   * word, { token: "<my-cat>", initializer: "cat", vectors: 1, template: "object" | "style" |
   * "captions" }. The result is out/learned_embeds.safetensors (for loadTextualInversion / A1111 /
   * diffusers). Defaults then: lr 5e-3, condDropout 0.
   */
  textualInversion?: TextualInversionTrainOptions;
  /**
   * Sample images while training (diffusers' validation prompts): { prompts, every, steps?, cfg?,
   * seed?, sampler? } draws each prompt every `every` steps and after the last, with the model as
   * it is then, into out/samples/step-<step>-<k>.png.
   */
  samples?: TrainSampleOptions;
  /** Sees every micro-batch as fed (captions after dropout); for inspection and tests. */
  onBatch?: (info: { step: number; indices: number[]; flips: boolean[]; captions: string[]; timesteps: number[] }) => void;
}

export interface TrainResult {
  out: string;
  step: number;
  steps: number;
  interrupted: boolean;
  losses: number[];
  imagesPerSec: number;
  skippedImages: number;
  /** Samples trained with the empty prompt, and all samples (this run, resumed runs included). */
  emptyPrompts: number;
  prompts: number;
  vae: TrainVaeResult | null;
  parameters: { unet: number; textEncoder: number; vae: number; lora?: number; textualInversion?: number };
  /** With `lora`: the written LoRA file. */
  loraFile?: string;
  /** With `textualInversion`: the written embedding file. */
  embeddingFile?: string;
  /** With `samples`: the images drawn during this run, in order. */
  sampleFiles?: string[];
}

const KEYS = [
  "data", "out", "init", "model", "textEncoder", "textEncoderSize", "tokenizer", "trimVocab", "vae", "vaeSteps", "vaeOptions",
  "ema", "predictionType", "snrGamma", "condDropout", "onBatch", "lora", "textualInversion", "samples", ...LOOP_KEYS,
];

function loadVae(dir: string): { vae: AutoencoderKL; dir: string } {
  const { dir: comp, json } = readVaeFolder("train", dir);
  const vae = new AutoencoderKL(json);
  try {
    loadVaeWeights(vae, comp);
  } catch (e) {
    vae.dispose();
    throw e;
  }
  return { vae, dir: comp };
}

/** The lora option, checked: null when off. */
function resolveLora(op: string, v: unknown, hasInit: boolean, textEncoder: unknown): { rank: number; alpha: number; textEncoder?: true; convRank?: number; convAlpha?: number } | null {
  if (v === undefined || v === false) return null;
  if (v !== true && (v === null || typeof v !== "object")) throw new TypeError(`${op}: lora must be true, false or { rank, alpha }`);
  if (!hasInit) throw new RangeError(`${op}: lora trains adapters on a trained model: pass init (a diffusers model folder)`);
  if (textEncoder === "train") throw new RangeError(`${op}: lora trains the U-Net's adapters only; the text encoder stays frozen (leave textEncoder unset)`);
  const o = v === true ? {} : (v as LoraTrainOptions);
  if (o.textEncoder !== undefined && typeof o.textEncoder !== "boolean") throw new TypeError(`${op}: lora.textEncoder must be a boolean`);
  const rank = o.rank ?? 4;
  if (!Number.isInteger(rank) || rank < 1 || rank > 1024) throw new RangeError(`${op}: lora.rank must be an integer in [1, 1024], got ${String(rank)}`);
  const alpha = o.alpha ?? rank;
  if (typeof alpha !== "number" || !Number.isFinite(alpha) || alpha <= 0) throw new RangeError(`${op}: lora.alpha must be a positive number, got ${String(alpha)}`);
  checkGroupKeys(op, "lora", o, ["rank", "alpha", "textEncoder", "convRank", "convAlpha"]);
  if (o.convRank === undefined && o.convAlpha !== undefined) throw new RangeError(`${op}: lora.convAlpha goes with lora.convRank`);
  const conv = o.convRank === undefined ? null : { convRank: o.convRank, convAlpha: o.convAlpha ?? o.convRank };
  if (conv && (!Number.isInteger(conv.convRank) || conv.convRank < 1 || conv.convRank > 1024)) throw new RangeError(`${op}: lora.convRank must be an integer in [1, 1024], got ${String(o.convRank)}`);
  if (conv && (typeof conv.convAlpha !== "number" || !Number.isFinite(conv.convAlpha) || conv.convAlpha <= 0)) throw new RangeError(`${op}: lora.convAlpha must be a positive number, got ${String(o.convAlpha)}`);
  return { rank, alpha, ...(o.textEncoder ? { textEncoder: true as const } : {}), ...(conv ?? {}) };
}

/** The options that make no sense with init (its architecture, text encoder and tokenizer are used as they are; no VAE is trained). */
const NOT_WITH_INIT = ["model", "textEncoderSize", "tokenizer", "trimVocab", "vaeSteps", "vaeOptions"] as const;

/** A model folder to fine-tune: checked and its configs read up front (weights are loaded later). */
interface InitModel {
  dir: string;
  folder: ModelFolder;
  unetDir: string;
  unetConfig: UNet2DConditionConfigJson;
  /** scheduler/scheduler_config.json, and its class (from model_index.json when the config lacks _class_name). */
  scheduler: Record<string, unknown>;
  schedulerClass: string;
  /** SDXL: a second (projecting) text encoder, pooled text and size ids condition the U-Net. */
  xl: boolean;
  /** SDXL's model_index.json force_zeros_for_empty_prompt (kept in an exported model). */
  forceZerosForEmptyPrompt: boolean;
}

function readInit(op: string, dir: unknown): InitModel {
  if (typeof dir !== "string" || dir === "") throw new TypeError(`${op}: init must be a diffusers model folder path`);
  if (/\.safetensors$/i.test(dir) && fs.existsSync(dir) && fs.statSync(dir).isFile())
    throw new Error(`${op}: init ${dir} is a single-file checkpoint; training starts from a diffusers folder: convert it first ` +
      `(diffusekit convert ${dir} <folder> --tokenizer <tokenizer folder>, or pipe.save(folder) after loadPipeline)`);
  let folder: ModelFolder;
  try {
    folder = ModelFolder.open(dir);
  } catch (e) {
    throw new Error(`${op}: init: ${(e as Error).message}`);
  }
  const where = (what: string) => `${op}: init ${folder.dir}: ${what}`;
  try {
    const unet = folder.component("unet");
    if (unet.className !== "UNet2DConditionModel") throw new Error(`component "unet" is a ${unet.className}, expected UNet2DConditionModel`);
    const unetDir = folder.componentDir("unet");
    const unetConfig = readJsonObject(path.join(unetDir, "config.json"), "unet config") as UNet2DConditionConfigJson;
    // the trainer conditions on one text encoder's states; SDXL also needs pooled text and size ids, and inpainting U-Nets a mask
    const xl = unetConfig.addition_embed_type === "text_time";
    if (unetConfig.addition_embed_type != null && !xl) throw new Error(`its U-Net's addition_embed_type ${JSON.stringify(unetConfig.addition_embed_type)} cannot be trained here (SD 1.x/2.x and SDXL can)`);
    if (xl && !folder.has("text_encoder")) throw new Error("an SDXL refiner (no first text encoder) cannot be trained here; the SDXL base model can");
    if (xl && (!folder.has("text_encoder_2") || !folder.has("tokenizer_2"))) throw new Error("an SDXL U-Net needs text_encoder_2/ and tokenizer_2/");
    if ((unetConfig.in_channels ?? 4) !== (unetConfig.out_channels ?? 4)) throw new Error(`its U-Net takes ${unetConfig.in_channels} input channels (an inpainting model); training one is not supported`);
    const schedulerClass = folder.component("scheduler").className;
    const scheduler = folder.config("scheduler");
    const zeros = folder.index.options["force_zeros_for_empty_prompt"];
    return { dir: folder.dir, folder, unetDir, unetConfig, scheduler: { _class_name: schedulerClass, ...scheduler }, schedulerClass, xl,
      forceZerosForEmptyPrompt: typeof zeros === "boolean" ? zeros : true };
  } catch (e) {
    throw new Error(where((e as Error).message));
  }
}

/** Strict load of a component folder's weights (every parameter present, shapes checked; float16 upcast): errors name the file. */
function loadComponentWeights(op: string, module: { loadStateDict(s: StateDictSource): void }, dir: string, what: string): void {
  const file = findWeights(dir).file;
  const src = openWeightsFile(file);
  try {
    module.loadStateDict(src);
  } catch (e) {
    throw new Error(`${op}: ${what} weights ${file} do not fit ${path.join(dir, "config.json")}: ${(e as Error).message}`);
  } finally {
    src.close();
  }
}

/** A model folder's text encoder and tokenizer (`second`: SDXL's text_encoder_2/ and tokenizer_2/), loaded frozen. */
function loadFrozenTextEncoder(dir: string, second = false): { te: CLIPTextModel; tokenizer: CLIPTokenizer; teDir: string; tokDir: string } {
  const root = path.resolve(dir), n = second ? "_2" : "";
  const teDir = path.join(root, `text_encoder${n}`), tokDir = path.join(root, `tokenizer${n}`);
  if (!fs.existsSync(path.join(teDir, "config.json")) || !fs.existsSync(tokDir))
    throw new Error(`train: textEncoder ${root} must be a model folder with text_encoder${n}/ and tokenizer${n}/${second ? " (an SDXL U-Net needs both encoders)" : ' (or "train")'}`);
  const tokenizer = CLIPTokenizer.fromDirectory(tokDir);
  const te = CLIPTextModel.fromConfig(readJsonObject(path.join(teDir, "config.json"), `text_encoder${n} config`), { withProjection: second });
  const src = openWeightsFile(findWeights(teDir).file);
  try {
    te.loadStateDict(src);
  } catch (e) {
    te.dispose();
    throw e;
  } finally {
    src.close();
  }
  return { te, tokenizer, teDir, tokDir };
}

function copyDir(src: string, dst: string): void {
  fs.mkdirSync(dst, { recursive: true });
  for (const f of fs.readdirSync(src)) {
    const s = path.join(src, f);
    if (fs.statSync(s).isFile()) {
      const tmp = path.join(dst, `.${f}.${process.pid}.tmp`);
      fs.copyFileSync(s, tmp);
      fs.renameSync(tmp, path.join(dst, f));
    }
  }
}

/** Posterior mean and logvar of every image (and of its mirror image), computed once. */
interface LatentCache { mean: Float32Array[]; logvar: Float32Array[]; per: number; shape: [number, number, number] }

async function cacheLatents(vae: AutoencoderKL, ds: TrainingDataset, flips: boolean, device: string): Promise<LatentCache> {
  const R = ds.resolution, f = vae.config.scaleFactor, L = vae.config.latentChannels;
  const shape: [number, number, number] = [L, R / f, R / f];
  const per = L * (R / f) * (R / f);
  const variants = flips ? [false, true] : [false];
  const mean = variants.map(() => new Float32Array(ds.size * per)), logvar = variants.map(() => new Float32Array(ds.size * per));
  const B = 8;
  for (const [v, flip] of variants.entries()) {
    for (let i0 = 0; i0 < ds.size; i0 += B) {
      const idx = Array.from({ length: Math.min(B, ds.size - i0) }, (_, k) => i0 + k);
      const post = noGrad(() => tidy(() => vae.encode(Tensor.fromArray(imagesToNchw(idx.map((i) => ds.image(i)), idx.map(() => flip)), [idx.length, 3, R, R], { device }))));
      mean[v].set(await post.mean.toFloat32Array(), i0 * per);
      logvar[v].set(await post.logvar.toFloat32Array(), i0 * per);
      post.mean.dispose();
      post.logvar.dispose();
      await yieldToLoop();
    }
  }
  return { mean, logvar, per, shape };
}

function gather(cache: Float32Array[], per: number, refs: { index: number; flip: boolean }[]): Float32Array {
  const out = new Float32Array(refs.length * per);
  refs.forEach((r, b) => {
    const src = cache[r.flip && cache.length > 1 ? 1 : 0];
    out.set(src.subarray(r.index * per, (r.index + 1) * per), b * per);
  });
  return out;
}

/** Trains a text-to-image model (see the top of this file). */
export async function train(opts: TrainOptions): Promise<TrainResult> {
  // 1. options
  const op = "train";
  checkKeys(op, opts, KEYS);
  if (typeof opts.out !== "string" || opts.out === "") throw new TypeError(`${op}: out must be a folder path`);
  const out = path.resolve(opts.out);
  // weights, optimiser state, EMA and every batch live here (float32); token ids stay on the cpu
  const device = trainingDevice(op, opts.device);
  const mp = mixedPrecisionDtype(op, opts.mixedPrecision);
  const onDevice = (m: { to(d: string): unknown }) => { if (device !== "cpu") m.to(device); };
  const resolution = intOpt(op, "resolution", opts.resolution, 64, 8);
  const init = opts.init === undefined ? null : readInit(op, opts.init);
  if (init) {
    const given = NOT_WITH_INIT.filter((k) => opts[k] !== undefined);
    if (given.length)
      throw new RangeError(`${op}: ${given.join(", ")} cannot be set with init (the UNet, text encoder and tokenizer are init's, and its VAE or the vae option is used)`);
  }
  const lora = resolveLora(op, opts.lora, init !== null, opts.textEncoder);
  const ti = resolveTextualInversion(op, opts.textualInversion);
  const samples = resolveSamples(op, opts.samples);
  if (ti && !init) throw new RangeError(`${op}: textualInversion trains a word for a trained model: pass init (a diffusers model folder)`);
  if (ti && lora) throw new RangeError(`${op}: textualInversion and lora train different things; run them one at a time`);
  if (ti && opts.textEncoder !== undefined) throw new RangeError(`${op}: textualInversion uses init's text encoder, frozen (leave textEncoder unset)`);
  if (init?.xl) {
    if (opts.textEncoder === "train") throw new RangeError(`${op}: an SDXL model's text encoders stay frozen here (leave textEncoder unset)`);
    if (lora?.textEncoder) throw new RangeError(`${op}: lora.textEncoder is not supported for SDXL models (adapters go on the U-Net only)`);
  }
  const model = opts.model ?? "small";
  const textEncoderMode = opts.textEncoder ?? (init ? init.dir : "train");
  if (typeof textEncoderMode !== "string" || textEncoderMode === "") throw new TypeError(`${op}: textEncoder must be "train" or a model folder path`);
  const trainText = textEncoderMode === "train";
  if (!trainText && opts.tokenizer !== undefined) throw new RangeError(`${op}: tokenizer is for textEncoder "train"; a frozen text encoder uses its own folder's tokenizer`);
  const teSize = opts.textEncoderSize ?? "small";
  if (typeof teSize === "string" && !MODEL_SIZES.includes(teSize)) throw new RangeError(`${op}: textEncoderSize must be one of ${MODEL_SIZES.join(", ")} or a config object, got ${JSON.stringify(teSize)}`);
  const steps = intOpt(op, "steps", opts.steps, 1000, 1);
  const batchSize = intOpt(op, "batchSize", opts.batchSize, 8, 1);
  const gradAccum = intOpt(op, "gradAccum", opts.gradAccum, 1, 1);
  const lr = numOpt(op, "lr", opts.lr, ti ? 5e-3 : init ? 1e-4 : 5e-4, (x) => x > 0, "> 0");  // with init: diffusers' train_text_to_image default
  const lrSchedule = opts.lrSchedule ?? "constant";
  if (!LR_SCHEDULES.includes(lrSchedule)) throw new RangeError(`${op}: lrSchedule must be one of ${LR_SCHEDULES.join(", ")}, got ${JSON.stringify(lrSchedule)}`);
  const warmupSteps = intOpt(op, "warmupSteps", opts.warmupSteps, Math.min(100, Math.floor(steps / 10)), 0);
  const weightDecay = numOpt(op, "weightDecay", opts.weightDecay, 1e-2, (x) => x >= 0, ">= 0");
  const maxGradNorm = numOpt(op, "maxGradNorm", opts.maxGradNorm, 1, (x) => x >= 0, ">= 0");
  const emaDecay = opts.ema === undefined || opts.ema === false ? null : opts.ema === true ? 0.9999 : numOpt(op, "ema", opts.ema, 0.9999, (x) => x > 0 && x < 1, "true, false or a decay in (0, 1)");
  const initPrediction = init ? init.scheduler.prediction_type ?? "epsilon" : "epsilon";
  if (init && opts.predictionType === undefined && !TRAIN_PREDICTION_TYPES.includes(initPrediction as TrainPredictionType))
    throw new RangeError(`${op}: init's scheduler prediction_type ${JSON.stringify(initPrediction)} cannot be trained; pass predictionType (${TRAIN_PREDICTION_TYPES.join(", ")})`);
  const predictionType = opts.predictionType ?? (initPrediction as TrainPredictionType);
  if (!TRAIN_PREDICTION_TYPES.includes(predictionType)) throw new RangeError(`${op}: predictionType must be one of ${TRAIN_PREDICTION_TYPES.join(", ")}, got ${JSON.stringify(predictionType)}`);
  // the noise schedule: init's (its betas, as a DDPMScheduler built from it trains), or SD1.x's
  const schedCfg = init ? { ...init.scheduler, prediction_type: predictionType } : schedulerConfig(predictionType);
  let alphasCumprod: Float32Array;
  try {
    alphasCumprod = noiseSchedule(init ? parseSchedulerConfig(schedCfg, "DDPMScheduler") : parseSchedulerConfig(schedCfg)).alphasCumprod;
  } catch (e) {
    throw new RangeError(`${op}: init's scheduler config: ${(e as Error).message}`);
  }
  const numTrainTimesteps = alphasCumprod.length;
  const snrGamma = opts.snrGamma === undefined || opts.snrGamma === null ? null : numOpt(op, "snrGamma", opts.snrGamma, 5, (x) => x > 0, "> 0 or null");
  const condDropout = numOpt(op, "condDropout", opts.condDropout, ti ? 0 : 0.1, (x) => x >= 0 && x <= 1, "in [0, 1]");
  const randomFlip = opts.randomFlip ?? true;
  const seed = intOpt(op, "seed", opts.seed, 0, 0);
  const saveEvery = intOpt(op, "saveEvery", opts.saveEvery, 0, 0);
  const logEvery = intOpt(op, "logEvery", opts.logEvery, 1, 1);
  const vaeSteps = intOpt(op, "vaeSteps", opts.vaeSteps, 1000, 1);

  const prev = readCheckpointState(out, "unet");
  if (prev && !opts.resume)
    throw new Error(`${op}: ${path.join(out, CHECKPOINT_DIR)} already holds a checkpoint (step ${prev.step}); pass resume: true to continue it, or choose another out folder`);
  // checked before anything runs: without init a VAE would be trained first, into out/vae
  if (prev && JSON.stringify(prev.fixed.init) !== JSON.stringify(init?.dir))
    throw new Error(`resume: the run's settings differ from the checkpoint's (init: checkpoint ${JSON.stringify(prev.fixed.init)}, now ${JSON.stringify(init?.dir)})`);
  fs.mkdirSync(out, { recursive: true });

  // 2. data
  const ds = await resolveData(op, opts.data, resolution, seed, opts);
  if (ti?.template === "captions") checkCaptionsNameToken(op, ds, ti.token);

  const stop = new StopControl(opts.signal, opts.handleSigint ?? true);
  const owned: { dispose(): void }[] = [];
  try {
    // 3. VAE: given, or trained first (resumable on its own)
    let vaeResult: TrainVaeResult | null = null;
    let vaeSrcDir: string;
    if (opts.vae !== undefined) {
      vaeSrcDir = opts.vae;
    } else if (init) {
      vaeSrcDir = init.folder.componentDir("vae");
    } else {
      vaeSrcDir = path.join(out, "vae");
      if (!isFinishedVae(vaeSrcDir)) {
        const hasCkpt = fs.existsSync(path.join(vaeSrcDir, CHECKPOINT_DIR, "state.json"));
        vaeResult = await trainVae({
          seed, batchSize, device, ...opts.vaeOptions, data: ds, out: vaeSrcDir, resolution, steps: vaeSteps, resume: hasCkpt && !!opts.resume,
          onLog: opts.onLog, logEvery, signal: stop.controller.signal, handleSigint: false,
        });
      }
    }
    if (stop.stopped) return { out, step: 0, steps, interrupted: true, losses: [], imagesPerSec: 0, skippedImages: ds.skipped, emptyPrompts: 0, prompts: 0,
      vae: vaeResult, parameters: { unet: 0, textEncoder: 0, vae: 0 } };
    const { vae, dir: vaeDir } = loadVae(vaeSrcDir);
    owned.push(vae);
    onDevice(vae);
    const factor = vae.config.scaleFactor, L = vae.config.latentChannels;
    if (resolution % factor !== 0) throw new RangeError(`${op}: resolution ${resolution} is not a multiple of the VAE's spatial factor ${factor}`);
    const latentSide = resolution / factor;

    // 4. tokenizer and text encoder
    const tokOut = path.join(out, "tokenizer");
    let te: CLIPTextModel, tokenizer: CLIPTokenizer, teConfig: Record<string, unknown> | null = null, frozenTe: { teDir: string; tokDir: string } | null = null;
    // SDXL: the second encoder, always frozen
    let xlText: { te: CLIPTextModel; tokenizer: CLIPTokenizer; teDir: string } | null = null;
    if (trainText && init) {
      // fine-tuned jointly from init's weights; init's tokenizer as it is (no trimming: the embedding rows are trained ones)
      const tokDir = init.folder.componentDir("tokenizer"), teDir = init.folder.componentDir("text_encoder");
      tokenizer = CLIPTokenizer.fromDirectory(tokDir);
      teConfig = readJsonObject(path.join(teDir, "config.json"), "text_encoder config");
      te = CLIPTextModel.fromConfig(teConfig);
      owned.push(te);
      loadComponentWeights(op, te, teDir, "init's text_encoder");
      onDevice(te);
      te.setRequiresGrad();
      copyDir(tokDir, tokOut);
    } else if (trainText) {
      let files;
      if (prev && fs.existsSync(path.join(tokOut, "vocab.json"))) {
        files = readTokenizerFiles(tokOut);
      } else {
        const srcDir = opts.tokenizer ?? defaultTokenizerDir();
        files = srcDir ? readTokenizerFiles(srcDir) : byteLevelTokenizerFiles();
        if (opts.trimVocab ?? true) files = trimTokenizer(files, [...Array.from({ length: ds.size }, (_, i) => ds.captions(i)).flat(), ""]);
        writeTokenizerFiles(tokOut, files);
      }
      tokenizer = tokenizerFromFiles(files);
      teConfig = textEncoderConfig(teSize, { ...tokenizerIds(files), maxLength: files.modelMaxLength });
      te = CLIPTextModel.fromConfig(teConfig);
      owned.push(te);
      initParameters(te, seed, "text_encoder");
      onDevice(te);  // initialised on the cpu (the same values on every device), then moved
      te.setRequiresGrad();
    } else {
      const fr = loadFrozenTextEncoder(textEncoderMode);
      te = fr.te;
      owned.push(te);
      onDevice(te);
      tokenizer = fr.tokenizer;
      frozenTe = { teDir: fr.teDir, tokDir: fr.tokDir };
      copyDir(fr.tokDir, tokOut);
      if (init?.xl) {
        const fr2 = loadFrozenTextEncoder(textEncoderMode, true);
        owned.push(fr2.te);
        onDevice(fr2.te);
        xlText = { te: fr2.te, tokenizer: fr2.tokenizer, teDir: fr2.teDir };
        copyDir(fr2.tokDir, path.join(out, "tokenizer_2"));
      }
    }
    const xlEncoders = xlText ? { tokenizer, textEncoder: te, tokenizer2: xlText.tokenizer, textEncoder2: xlText.te } : null;
    // textual inversion: the new word's rows, looked up beside the frozen table
    const embedding = ti ? new TrainedEmbedding([{ te, tokenizer }, ...(xlText ? [{ te: xlText.te, tokenizer: xlText.tokenizer }] : [])], ti, device) : null;
    if (embedding) owned.push(embedding);
    const hidden = te.config.hiddenSize + (xlText ? xlText.te.config.hiddenSize : 0), T = tokenizer.maxLength;
    const pooledDim = xlText ? xlText.te.config.projectionDim! : 0;
    // frozen encoders: each distinct caption (and "") encoded once; SDXL also keeps the pooled text
    const embCache = new Map<string, Float32Array>(), pooledCache = new Map<string, Float32Array>();
    const encodeFrozen = async (texts: string[]) => {
      const missing = [...new Set(texts)].filter((t) => !embCache.has(t));
      for (let i = 0; i < missing.length; i += 16) {
        const chunk = missing.slice(i, i + 16);
        const r = noGrad(() => tidy(() => {
          if (xlEncoders) return encodeTextsXL(xlEncoders, chunk, chunk);
          return { embeds: te.forward(Tensor.fromArray(tokenizer.encodePaddedBatch(chunk), [chunk.length, T])).lastHiddenState, pooled: null };
        }));
        const v = await r.embeds.toFloat32Array(), p = r.pooled ? await r.pooled.toFloat32Array() : null;
        r.embeds.dispose();
        r.pooled?.dispose();
        chunk.forEach((t, k) => {
          embCache.set(t, v.slice(k * T * hidden, (k + 1) * T * hidden));
          if (p) pooledCache.set(t, p.slice(k * pooledDim, (k + 1) * pooledDim));
        });
      }
    };
    // SDXL's size and crop ids: square training images, resized whole (original = target = resolution, no crop)
    const timeIds = xlText ? Float32Array.from({ length: batchSize * 6 }, (_, i) => (i % 6 === 2 || i % 6 === 3 ? 0 : resolution)) : null;  // [batchSize, 6]

    // 5. latent cache
    const cache = await cacheLatents(vae, ds, randomFlip, device);
    const sf = vae.config.scalingFactor;

    // 6. UNet, optimiser, EMA, resume
    const unetCfg = init ? init.unetConfig : unetConfig(model, { latentChannels: L, crossAttentionDim: hidden, sampleSize: latentSide });
    const unet = new UNet2DConditionModel(unetCfg);
    owned.push(unet);
    if (init) {
      const c = unet.config, cfgFile = path.join(init.unetDir, "config.json");
      if (c.inChannels !== L || c.outChannels !== L)
        throw new RangeError(`${op}: ${cfgFile} takes ${c.inChannels} channels and returns ${c.outChannels}, but the VAE ${vaeDir} has ${L} latent channels`);
      if (c.crossAttentionDim.some((d) => d !== hidden))
        throw new RangeError(`${op}: ${cfgFile} has cross_attention_dim ${c.crossAttentionDim.join("/")}, but the text encoder's hidden size is ${hidden}`);
      loadComponentWeights(op, unet, init.unetDir, "init's unet");
    } else {
      initParameters(unet, seed, "unet");
    }
    onDevice(unet);
    // LoRA: the U-Net stays frozen and only the adapters beside its attention projections train
    const adapters = lora ? new LoraAdapters(unet, { ...lora, seed, device, textEncoder: lora.textEncoder ? te : null }) : null;
    if (adapters) owned.push(adapters);
    else if (!embedding) unet.setRequiresGrad();
    const trained: [string, Tensor][] = adapters ? adapters.params() : embedding ? embedding.params() : [
      ...unet.namedParameters().map(([n, t]) => [`unet.${n}`, t] as [string, Tensor]),
      ...(trainText ? te.namedParameters().map(([n, t]) => [`text_encoder.${n}`, t] as [string, Tensor]) : []),
    ];
    const names = trained.map(([n]) => n), params = trained.map(([, t]) => t);
    const opt = new AdamW(params, { lr, weightDecay });
    owned.push({ dispose: () => { opt.zeroGrad(); opt.dispose(); } });
    const ema = emaDecay === null ? null : new EMA(params, { decay: emaDecay });
    if (ema) owned.push(ema);
    const fixed = { resolution, unet: unetCfg, textEncoder: trainText ? teConfig : path.resolve(textEncoderMode), vaeScalingFactor: sf,
      vaeConfig: vae.config.blockOutChannels, batchSize, gradAccum, seed, randomFlip, predictionType, snrGamma, condDropout, ema: emaDecay,
      // only with init (a checkpoint written without it has no such keys)
      ...(init ? { init: init.dir, scheduler: schedCfg } : {}), ...(lora ? { lora } : {}), ...(ti ? { textualInversion: ti } : {}) };
    const modelIndex = stableDiffusionModelIndex({ schedulerClass: init ? init.schedulerClass : "DDIMScheduler", xl: !!xlText, forceZerosForEmptyPrompt: init?.forceZerosForEmptyPrompt });
    let rng = new Rng(seed, "unet-train");
    const sampler = new EpochSampler(ds.size, mixSeed(seed, "unet-order"), randomFlip);
    let step = 0, emptyPrompts = 0, prompts = 0;
    if (prev) {
      checkFixed(prev, fixed);
      restoreCheckpoint(out, prev, names, params, opt, ema);
      rng = Rng.fromState(prev.rng);
      sampler.load(prev.sampler);
      step = prev.step;
      emptyPrompts = prev.counters.emptyPrompts ?? 0;
      prompts = prev.counters.prompts ?? 0;
    }

    // 8. export (used by every save): the model folder, then the checkpoint
    const loraFile = path.join(out, "lora.safetensors"), embeddingFile = path.join(out, "learned_embeds.safetensors");
    // the text encoder runs every step when it trains (or its LoRA adapters do); frozen, its states are cached
    const teEachStep = trainText || !!lora?.textEncoder || !!embedding;
    const save = async (done: boolean) => {
      const replace = ema ? new Map(params.map((p, i) => [p, ema.shadow[i]] as [Tensor, Tensor])) : undefined;
      const state = { kind: "unet" as const, step, done, paramNames: names, rng: rng.state(), sampler: sampler.state(),
        counters: { emptyPrompts, prompts }, fixed, info: { steps, lr, skippedImages: ds.skipped } };
      if (adapters || embedding) {
        if (adapters) await adapters.save(loraFile, replace);
        else await embedding!.save(embeddingFile, replace);
        await saveCheckpoint(out, state, params, opt, ema);
        return;
      }
      writeJsonFile(path.join(out, "model_index.json"), modelIndex);
      writeJsonFile(path.join(out, "scheduler", "scheduler_config.json"), schedCfg);
      await writeModuleComponent(path.join(out, "unet"), unetCfg as Record<string, unknown>, "diffusion_pytorch_model.safetensors", unet, { dtype: "float32", replace });
      if (trainText) await writeModuleComponent(path.join(out, "text_encoder"), teConfig!, "model.safetensors", te, { dtype: "float32", replace });
      else if (!fs.existsSync(path.join(out, "text_encoder", "config.json"))) copyDir(frozenTe!.teDir, path.join(out, "text_encoder"));
      if (xlText && !fs.existsSync(path.join(out, "text_encoder_2", "config.json"))) copyDir(xlText.teDir, path.join(out, "text_encoder_2"));
      if (path.resolve(vaeDir) !== path.join(out, "vae")) copyDir(vaeDir, path.join(out, "vae"));
      await saveCheckpoint(out, state, params, opt, ema);
    };

    // 7. the loop. Each step's graph is queued before the previous step's loss and gradient norm
    // are awaited (their reads were queued right behind that step's work), so the device never
    // idles while the host builds a graph. A stop asked for while settling step k (onLog, a
    // signal) drops step k + 1's queued forward/backward and restores the RNG and data order, so
    // it ends exactly after step k, as if the loop had waited.
    const losses: number[] = [], sampleFiles: string[] = [];
    const meter = new Throughput(Math.max(0, steps - step));
    // held: [gradAccum losses, gradient norm]
    const behind = new ReadBehind<{ step: number; lr: number; epoch: number; terms: { emptyPrompts: number; prompts: number } }>((v, p) => {
      let lossSum = 0;
      for (let i = 0; i < gradAccum; i++) lossSum += v[i] * gradAccum;
      meter.add(batchSize * gradAccum);
      const loss = lossSum / gradAccum;
      losses.push(loss);
      if (opts.onLog && (p.step % logEvery === 0 || p.step === steps))
        opts.onLog({ phase: "unet", step: p.step, steps, loss, lr: p.lr, gradNorm: v[gradAccum], epoch: p.epoch, imagesPerSec: meter.imagesPerSec,
          elapsedSec: meter.elapsedSec, etaSec: meter.etaSec, terms: p.terms });
    });
    try {
      while (step < steps && !stop.stopped) {
        const undo = { rng: rng.state(), sampler: sampler.state(), emptyPrompts, prompts };
        step++;
        opt.lr = learningRateAt(step, { lr, warmupSteps, schedule: lrSchedule, totalSteps: steps });
        const held: Tensor[] = [];
        const batches: Parameters<NonNullable<TrainOptions["onBatch"]>>[0][] = [];
        for (let micro = 0; micro < gradAccum; micro++) {
          const refs = sampler.take(batchSize);
          const captions = refs.map((r) => sampleCaption(ds, r));
          const dropped = dropConditions(embedding ? captions.map((c) => embedding.prompt(c, rng)) : captions, condDropout, rng);
          emptyPrompts += dropped.dropped;
          prompts += batchSize;
          const timesteps = refs.map(() => rng.int(numTrainTimesteps));
          const epsSeed = rng.seed31(), noiseSeed = rng.seed31();
          batches.push({ step, indices: refs.map((r) => r.index), flips: refs.map((r) => r.flip), captions: dropped.captions, timesteps });
          let ehs: Tensor | null = null, ids: Tensor | null = null, added: AddedCond | null = null;
          if (teEachStep && !xlEncoders) {
            ids = Tensor.fromArray(tokenizer.encodePaddedBatch(dropped.captions), [batchSize, T]);
          } else if (!teEachStep) {
            await encodeFrozen(dropped.captions);
            const buf = new Float32Array(batchSize * T * hidden);
            dropped.captions.forEach((c, b) => buf.set(embCache.get(c)!, b * T * hidden));
            ehs = Tensor.fromArray(buf, [batchSize, T, hidden], { device });
            if (timeIds) {
              const pooled = new Float32Array(batchSize * pooledDim);
              dropped.captions.forEach((c, b) => pooled.set(pooledCache.get(c)!, b * pooledDim));
              added = { textEmbeds: Tensor.fromArray(pooled, [batchSize, pooledDim], { device }), timeIds: Tensor.fromArray(timeIds, [batchSize, 6], { device }) };
            }
          }
          const shape = [batchSize, ...cache.shape];
          const mean = Tensor.fromArray(gather(cache.mean, cache.per, refs), shape, { device });
          const logvar = Tensor.fromArray(gather(cache.logvar, cache.per, refs), shape, { device });
          const { loss, pooled } = tidy(() => {
            // Philox noise: the same values on the cpu and on a GPU
            const z = ops.mul(samplePosterior(mean, logvar, Tensor.randn(shape, { seed: epsSeed, device })), sf);
            const noise = Tensor.randn(shape, { seed: noiseSeed, device });
            const noisy = addNoise(z, noise, timesteps, alphasCumprod);
            const text = teEachStep && !xlEncoders ? te.forward(ids!) : null;
            // SDXL with its encoders in the graph (textual inversion): both encoders every step
            const xlCond = teEachStep && xlEncoders ? encodeTextsXL(xlEncoders, dropped.captions, dropped.captions) : null;
            const tt = Tensor.fromArray(Float32Array.from(timesteps), [batchSize], { device });
            const ctx = text ? text.lastHiddenState : xlCond ? xlCond.embeds : ehs!;
            const xlAdded = xlCond ? { textEmbeds: xlCond.pooled, timeIds: Tensor.fromArray(timeIds!, [batchSize, 6], { device }) } : null;
            // mixed precision: the UNet on bf16 copies of its weights and input (the text encoder and the loss stay float32)
            const cond = added ? { addedCond: added } : xlAdded ? { addedCond: xlAdded } : {};
            const pred = mp ? unet.withParametersAs(mp, () => unet.forward(noisy.to(device, mp), tt, ctx, cond).to(device, "float32")) : unet.forward(noisy, tt, ctx, cond);
            const l = diffusionLoss(pred, z, noise, timesteps, alphasCumprod, { predictionType, snrGamma });
            return { loss: gradAccum > 1 ? ops.div(l, gradAccum) : l, pooled: text?.pooled ?? null };
          });
          backward(loss);
          // the pooled output is recorded but unused: free what only it still holds
          if (pooled) releaseGraph(pooled);
          held.push(loss);
          for (const t of [pooled, mean, logvar, ehs, ids, added?.textEmbeds, added?.timeIds]) t?.dispose();
        }
        await behind.flush();  // the previous step, while this one runs
        if (stop.stopped) {
          opt.zeroGrad();  // this step's gradients, never applied
          for (const t of held) t.dispose();
          rng = Rng.fromState(undo.rng);
          sampler.load(undo.sampler);
          ({ emptyPrompts, prompts } = undo);
          step--;
          break;
        }
        for (const b of batches) opts.onBatch?.(b);
        await finishStep({ step, steps, params, maxGradNorm, held, info: { step, lr: opt.lr, epoch: sampler.epoch, terms: { emptyPrompts, prompts } },
          behind, opt, ema, saveEvery, save });
        if (samplesDue(samples, step, steps)) {
          await behind.flush();  // the step's numbers first: drawing takes a while
          sampleFiles.push(...await writeSamples(samples!, {
            unet, vae, tokenizer, textEncoder: te, tokenizer2: xlText?.tokenizer, textEncoder2: xlText?.te, scheduler: schedCfg, device,
            forceZerosForEmptyPrompt: init?.forceZerosForEmptyPrompt,
          }, out, step, resolution));
        }
      }
      await behind.flush();
    } finally {
      behind.dispose();  // an error mid-loop: the held step's tensors
    }
    const interrupted = step < steps;
    await save(!interrupted);
    return {
      out, step, steps, interrupted, losses, imagesPerSec: meter.imagesPerSec, skippedImages: ds.skipped, emptyPrompts, prompts, vae: vaeResult,
      parameters: { unet: unet.parameterCount(), textEncoder: te.parameterCount() + (xlText ? xlText.te.parameterCount() : 0), vae: vae.parameterCount(), ...(adapters ? { lora: adapters.parameterCount() } : {}),
        ...(embedding ? { textualInversion: embedding.size } : {}) },
      ...(adapters ? { loraFile } : {}), ...(embedding ? { embeddingFile } : {}), ...(samples ? { sampleFiles } : {}),
    };
  } finally {
    stop.dispose();
    for (const m of owned.reverse()) m.dispose();
  }
}
