// trainVae: an AutoencoderKL trained from scratch on an image dataset (reconstruction + β·KL,
// optionally an image-gradient term; objectives.ts), written as a diffusers component folder:
// `<out>/config.json` + `<out>/diffusion_pytorch_model.safetensors`, which train({ vae }) and
// AutoencoderKL.from_pretrained load. Its scaling_factor is set to 1/std of the latents of the
// first (up to) 64 training images, as SD's 0.18215 was measured.
import * as fs from "fs";
import * as path from "path";
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { noGrad, backward } from "../autograd";
import {
  AutoencoderKL, renameLegacyVaeKey, resolveAutoencoderKLConfig, type AutoencoderKLConfig, type AutoencoderKLConfigJson,
} from "../models/autoencoder-kl";
import { findWeights, openWeightsFile, readJsonObject } from "../io/model-folder";
import { AdamW, learningRateAt, LR_SCHEDULES, type LrScheduleName } from "./optim";
import { EpochSampler, imagesToNchw, type TrainingDataset } from "./data";
import { RECONSTRUCTION_LOSSES, samplePosterior, vaeLoss, type ReconstructionLoss } from "./objectives";
import { Rng, mixSeed } from "./rng";
import { initParameters } from "./init";
import { vaeConfig } from "./presets";
import { CHECKPOINT_DIR, checkFixed, readCheckpointState, restoreCheckpoint, saveCheckpoint } from "./checkpoint";
import { writeModuleComponent } from "../io/module-weights";
import {
  ReadBehind, StopControl, Throughput, checkKeys, finishStep, intOpt, mixedPrecisionDtype, numOpt, resolveData, trainingDevice,
  LOOP_KEYS, type DataOption, type LoopOptions, type TrainLogInfo,
} from "./loop";

export interface TrainVaeOptions extends LoopOptions {
  /** A folder (images + captions are not needed), "shapes", or a TrainingDataset. */
  data: DataOption;
  /** Output component folder (config.json + weights; checkpoint/ inside). */
  out: string;
  latentChannels?: number;
  /** One entry per level; the spatial factor is 2^(levels − 1). Default [32, 64, 64] (4x). */
  blockOutChannels?: number[];
  layersPerBlock?: number;
  /** Default: 8, or fewer so that it divides every channel count. */
  normNumGroups?: number;
  /** Self-attention in the mid blocks (diffusers' default true). */
  midBlockAttention?: boolean;
  /**
   * Start from this trained VAE (a component folder, or a model folder with vae/) instead of
   * random weights; its config fixes the architecture (the shape options above must be unset).
   */
  init?: string;
  /**
   * false: train only the decoder (and post_quant_conv), keeping the encoder, so the latent space
   * and the scaling factor stay those of `init` (a denoiser trained on them stays valid; this is
   * how SD's decoder was fine-tuned). Needs `init`. Default true.
   */
  trainEncoder?: boolean;
  /** β of the KL term (default 1e-6). */
  klWeight?: number;
  reconstruction?: ReconstructionLoss;
  /** Weight of the image-gradient difference term (default 0.1). */
  gradientWeight?: number;
}

export interface TrainVaeResult {
  out: string;
  /** Steps completed. */
  step: number;
  steps: number;
  interrupted: boolean;
  losses: number[];
  imagesPerSec: number;
  skippedImages: number;
  scalingFactor: number;
  config: AutoencoderKLConfigJson;
}

const KEYS = [
  "data", "out", "latentChannels", "blockOutChannels", "layersPerBlock", "normNumGroups", "midBlockAttention", "init", "trainEncoder",
  "klWeight", "reconstruction", "gradientWeight", ...LOOP_KEYS,
];

function defaultGroups(channels: number[]): number {
  let g = 8;
  while (channels.some((c) => c % g !== 0)) g >>= 1;
  return Math.max(1, g);
}

/** Trains an AutoencoderKL (see the top of this file). */
export async function trainVae(opts: TrainVaeOptions): Promise<TrainVaeResult> {
  const op = "trainVae";
  checkKeys(op, opts, KEYS);
  if (typeof opts.out !== "string" || opts.out === "") throw new TypeError(`${op}: out must be a folder path`);
  const out = path.resolve(opts.out);
  const device = trainingDevice(op, opts.device);  // float32 weights, moments and batches live here
  const mp = mixedPrecisionDtype(op, opts.mixedPrecision);
  const resolution = intOpt(op, "resolution", opts.resolution, 64, 8);
  const trainEncoder = opts.trainEncoder ?? true;
  if (typeof trainEncoder !== "boolean") throw new TypeError(`${op}: trainEncoder must be a boolean`);
  const init = opts.init === undefined ? null : readVaeFolder(op, opts.init);
  if (!trainEncoder && !init) throw new RangeError(`${op}: trainEncoder: false fine-tunes the decoder of a trained VAE: pass init`);
  if (init) {
    const shapeKeys = ["latentChannels", "blockOutChannels", "layersPerBlock", "normNumGroups", "midBlockAttention"] as const;
    const given = shapeKeys.filter((k) => opts[k] !== undefined);
    if (given.length) throw new RangeError(`${op}: ${given.join(", ")} cannot be set with init (the architecture is init's)`);
  }
  const initCfg = init?.config;
  const latentChannels = initCfg ? initCfg.latentChannels : intOpt(op, "latentChannels", opts.latentChannels, 4, 1);
  const boc = initCfg ? initCfg.blockOutChannels : opts.blockOutChannels ?? [32, 64, 64];
  if (!Array.isArray(boc) || boc.length < 1 || boc.some((c) => !Number.isInteger(c) || c < 1))
    throw new RangeError(`${op}: blockOutChannels must be a non-empty list of positive integers, got ${JSON.stringify(boc)}`);
  const factor = 2 ** (boc.length - 1);
  if (resolution % factor !== 0) throw new RangeError(`${op}: resolution ${resolution} must be a multiple of the VAE's spatial factor ${factor}`);
  const layersPerBlock = initCfg ? initCfg.layersPerBlock : intOpt(op, "layersPerBlock", opts.layersPerBlock, 1, 1);
  const groups = initCfg ? initCfg.normNumGroups : intOpt(op, "normNumGroups", opts.normNumGroups, defaultGroups(boc), 1);
  if (boc.some((c) => c % groups !== 0)) throw new RangeError(`${op}: normNumGroups ${groups} must divide every blockOutChannels entry (${boc.join(", ")})`);
  const steps = intOpt(op, "steps", opts.steps, 1000, 1);
  const batchSize = intOpt(op, "batchSize", opts.batchSize, 8, 1);
  const gradAccum = intOpt(op, "gradAccum", opts.gradAccum, 1, 1);
  const lr = numOpt(op, "lr", opts.lr, 5e-4, (x) => x > 0, "> 0");
  const lrSchedule = opts.lrSchedule ?? "constant";
  if (!LR_SCHEDULES.includes(lrSchedule)) throw new RangeError(`${op}: lrSchedule must be one of ${LR_SCHEDULES.join(", ")}, got ${JSON.stringify(lrSchedule)}`);
  const warmupSteps = intOpt(op, "warmupSteps", opts.warmupSteps, Math.min(100, Math.floor(steps / 10)), 0);
  const weightDecay = numOpt(op, "weightDecay", opts.weightDecay, 0, (x) => x >= 0, ">= 0");
  const maxGradNorm = numOpt(op, "maxGradNorm", opts.maxGradNorm, 1, (x) => x >= 0, ">= 0");
  const klWeight = numOpt(op, "klWeight", opts.klWeight, 1e-6, (x) => x >= 0, ">= 0");
  const reconstruction = opts.reconstruction ?? "l1";
  if (!RECONSTRUCTION_LOSSES.includes(reconstruction)) throw new RangeError(`${op}: reconstruction must be one of ${RECONSTRUCTION_LOSSES.join(", ")}, got ${JSON.stringify(reconstruction)}`);
  const gradientWeight = numOpt(op, "gradientWeight", opts.gradientWeight, 0.1, (x) => x >= 0, ">= 0");
  const seed = intOpt(op, "seed", opts.seed, 0, 0);
  const saveEvery = intOpt(op, "saveEvery", opts.saveEvery, 0, 0);
  const logEvery = intOpt(op, "logEvery", opts.logEvery, 1, 1);
  const randomFlip = opts.randomFlip ?? true;

  const fixed = { resolution, latentChannels, blockOutChannels: boc, layersPerBlock, normNumGroups: groups,
    midBlockAttention: initCfg ? initCfg.midBlockAddAttention : opts.midBlockAttention ?? true,
    batchSize, gradAccum, seed, randomFlip, reconstruction, init: init?.dir ?? null, trainEncoder };
  const prev = readCheckpointState(out, "vae");
  if (prev && !opts.resume)
    throw new Error(`${op}: ${path.join(out, CHECKPOINT_DIR)} already holds a checkpoint (step ${prev.step}); pass resume: true to continue it, or choose another out folder`);
  if (prev) checkFixed(prev, fixed);

  const ds = await resolveData(op, opts.data, resolution, seed, opts);
  const shape = { latentChannels, blockOutChannels: boc, layersPerBlock, normNumGroups: groups, resolution, scalingFactor: 1, midBlockAttention: fixed.midBlockAttention };
  const vae = new AutoencoderKL(init ? init.json : vaeConfig(shape));
  const stop = new StopControl(opts.signal, opts.handleSigint ?? true);
  let opt: AdamW | null = null;
  try {
    if (init) loadVaeWeights(vae, init.dir);
    else initParameters(vae, seed, "vae");
    if (device !== "cpu") vae.to(device);  // loaded / initialised on the cpu, then moved
    // a frozen encoder gets no gradient: only the decoder side is optimised
    const named = vae.namedParameters().filter(([n]) => trainEncoder || n.startsWith("decoder.") || n.startsWith("post_quant_conv."));
    for (const [, t] of named) t.requiresGrad = true;
    const names = named.map(([n]) => n), params = named.map(([, t]) => t);
    opt = new AdamW(params, { lr, weightDecay });
    let rng = new Rng(seed, "vae-train");
    const sampler = new EpochSampler(ds.size, mixSeed(seed, "vae-order"), randomFlip);
    let step = 0;
    if (prev) {
      restoreCheckpoint(out, prev, names, params, opt, null);
      rng = Rng.fromState(prev.rng);
      sampler.load(prev.sampler);
      step = prev.step;
    }
    const latentSide = resolution / factor;
    const losses: number[] = [];
    const meter = new Throughput(Math.max(0, steps - step));
    const save = async (done: boolean) => {
      const sf = trainEncoder ? await measureScalingFactor(vae, ds, seed, device) : vae.config.scalingFactor;
      const cfg = init ? { ...init.json, scaling_factor: sf } : vaeConfig({ ...shape, scalingFactor: sf });
      await writeModuleComponent(out, cfg as Record<string, unknown>, "diffusion_pytorch_model.safetensors", vae, { dtype: "float32" });
      await saveCheckpoint(out, { kind: "vae", step, done, paramNames: names, rng: rng.state(), sampler: sampler.state(),
        counters: {}, fixed, info: { steps, lr, skippedImages: ds.skipped } }, params, opt!, null);
      return { sf, cfg };
    };

    // The step's losses and gradient norm are read one step late, as in train() (trainer.ts);
    // held: [loss, reconstruction, kl] per micro-batch, then the gradient norm.
    const behind = new ReadBehind<{ step: number; lr: number; epoch: number }>((v, p) => {
      let lossSum = 0, recSum = 0, klSum = 0;
      for (let i = 0; i < gradAccum; i++) {
        lossSum += v[3 * i] * gradAccum;
        recSum += v[3 * i + 1];
        klSum += v[3 * i + 2];
      }
      meter.add(batchSize * gradAccum);
      const loss = lossSum / gradAccum;
      losses.push(loss);
      if (opts.onLog && (p.step % logEvery === 0 || p.step === steps))
        opts.onLog({ phase: "vae", step: p.step, steps, loss, lr: p.lr, gradNorm: v[3 * gradAccum], epoch: p.epoch, imagesPerSec: meter.imagesPerSec,
          elapsedSec: meter.elapsedSec, etaSec: meter.etaSec, terms: { reconstruction: recSum / gradAccum, kl: klSum / gradAccum } });
    });
    // mixed precision: the VAE on bf16 copies of its weights and inputs; the posterior and the loss in float32
    const net = <R>(fn: () => R): R => (mp ? vae.withParametersAs(mp, fn) : fn());
    const low = (t: Tensor) => (mp ? t.to(device, mp) : t), f32 = (t: Tensor) => (mp ? t.to(device, "float32") : t);
    try {
      while (step < steps && !stop.stopped) {
        const undo = { rng: rng.state(), sampler: sampler.state() };
        step++;
        opt.lr = learningRateAt(step, { lr, warmupSteps, schedule: lrSchedule, totalSteps: steps });
        const held: Tensor[] = [];
        for (let micro = 0; micro < gradAccum; micro++) {
          const refs = sampler.take(batchSize);
          const x = Tensor.fromArray(imagesToNchw(refs.map((r) => ds.image(r.index)), refs.map((r) => r.flip)), [batchSize, 3, resolution, resolution], { device });
          const eps = Tensor.randn([batchSize, latentChannels, latentSide, latentSide], { seed: rng.seed31(), device });
          const terms = tidy(() => {
            const enc = () => net(() => { const p = vae.encode(low(x)); return { mean: f32(p.mean), logvar: f32(p.logvar) }; });
            const { mean, logvar } = trainEncoder ? enc() : noGrad(enc);
            const recon = f32(net(() => vae.decode(low(samplePosterior(mean, logvar, eps)))));
            const t = vaeLoss(x, recon, mean, logvar, { reconstruction, klWeight, gradientWeight });
            return { loss: gradAccum > 1 ? ops.div(t.loss, gradAccum) : t.loss, rec: t.reconstruction, kl: t.kl };
          });
          backward(terms.loss);
          held.push(terms.loss, terms.rec, terms.kl);
          for (const t of [x, eps]) t.dispose();
        }
        await behind.flush();  // the previous step, while this one runs
        if (stop.stopped) {  // asked while settling the previous step: this one never happened
          opt.zeroGrad();
          for (const t of held) t.dispose();
          rng = Rng.fromState(undo.rng);
          sampler.load(undo.sampler);
          step--;
          break;
        }
        await finishStep({ step, steps, params, maxGradNorm, held, info: { step, lr: opt.lr, epoch: sampler.epoch }, behind, opt, saveEvery, save });
      }
      await behind.flush();
    } finally {
      behind.dispose();  // an error mid-loop: the held step's tensors
    }
    const interrupted = step < steps;
    const { sf, cfg } = await save(!interrupted);
    return { out, step, steps, interrupted, losses, imagesPerSec: meter.imagesPerSec, skippedImages: ds.skipped, scalingFactor: sf, config: cfg };
  } finally {
    stop.dispose();
    opt?.zeroGrad();
    opt?.dispose();
    vae.dispose();
  }
}

/** A trained VAE's folder: the component folder itself, or a model folder's vae/. */
export function readVaeFolder(op: string, dir: string): { dir: string; json: AutoencoderKLConfigJson; config: AutoencoderKLConfig } {
  if (typeof dir !== "string" || dir === "") throw new TypeError(`${op}: a VAE folder must be a path`);
  const root = path.resolve(dir);
  const comp = fs.existsSync(path.join(root, "config.json")) ? root : path.join(root, "vae");
  if (!fs.existsSync(path.join(comp, "config.json"))) throw new Error(`${op}: vae ${root} has neither config.json nor vae/config.json`);
  const json = readJsonObject(path.join(comp, "config.json"), "vae config") as AutoencoderKLConfigJson;
  return { dir: comp, json, config: resolveAutoencoderKLConfig(json) };
}

/** Loads a VAE folder's weights into `vae` (legacy key names are renamed). */
export function loadVaeWeights(vae: AutoencoderKL, dir: string): void {
  const src = openWeightsFile(findWeights(dir).file, { mapKey: renameLegacyVaeKey });
  try {
    vae.loadStateDict(src);
  } finally {
    src.close();
  }
}

/** 1 / std of posterior samples of the first (up to) 64 images (fixed noise seed), as float32. */
async function measureScalingFactor(vae: AutoencoderKL, ds: TrainingDataset, seed: number, device: string): Promise<number> {
  const n = Math.min(64, ds.size), R = ds.resolution, B = 8;
  let sum = 0, sumSq = 0, count = 0;
  for (let i0 = 0; i0 < n; i0 += B) {
    const idx = Array.from({ length: Math.min(B, n - i0) }, (_, k) => i0 + k);
    const z = noGrad(() => tidy(() => {
      const x = Tensor.fromArray(imagesToNchw(idx.map((i) => ds.image(i))), [idx.length, 3, R, R], { device });
      const { mean, logvar } = vae.encode(x);
      return samplePosterior(mean, logvar, Tensor.randn([...mean.shape], { seed: mixSeed(seed, "scale", i0) >>> 1, device }));
    }));
    const v = await z.toFloat32Array();
    z.dispose();
    for (const x of v) { sum += x; sumSq += x * x; }
    count += v.length;
  }
  const mean = sum / count;
  const std = Math.sqrt(Math.max(1e-12, sumSq / count - mean * mean));
  return Math.fround(1 / std);
}

/** True when `dir` holds a finished trainVae output (weights + a checkpoint marked done). */
export function isFinishedVae(dir: string): boolean {
  const s = readCheckpointState(dir, "vae");
  return !!s && s.done && fs.existsSync(path.join(dir, "config.json")) && fs.existsSync(path.join(dir, "diffusion_pytorch_model.safetensors"));
}
