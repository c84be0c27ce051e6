#!/usr/bin/env node
// Rebuilds the built-in model (models/builtin) from scratch with the repo's own trainer:
//
//   1. fetch   scripts/fetch-emoji.js: emoji-datasource-google@16.0.0 via `npm pack` -> .cache/emoji/
//   2. vae     trainVae() on .cache/emoji/train -> .cache/builtin/vae
//   3. unet    train(): a UNet of 3.7 M parameters + a CLIP text encoder trained jointly from scratch, with the
//              CLIP vocabulary trimmed to the caption words -> .cache/builtin/model
//   4. decoder trainVae({ init: vae, trainEncoder: false }): the VAE's decoder fine-tuned longer, encoder
//              frozen, so the UNet's latent space is unchanged -> .cache/builtin/vae-decoder
//   5. export  the model folder (its vae/ replaced by the fine-tuned one) without its checkpoint, weights as float16 safetensors,
//              + NOTICE-emoji.txt -> models/builtin
//
// `--device cuda` (or auto, cuda:N) runs every stage on a GPU (float32, as on the CPU). `--init DIR` continues
// from a trained model folder instead (e.g. models/builtin): stages 2 and 4 are skipped (init's VAE, decoder
// included, is kept), and stage 3 fine-tunes init's UNet and text encoder jointly with init's tokenizer
// (24,000 steps at lr 5e-4 unless --unet-steps is given; work folder .cache/builtin-init unless --work is given).
//
// Every stage resumes from its checkpoint (run it again after Ctrl-C); a finished stage is skipped.
// `--export-only` re-exports the latest saved model (the trainer exports every --save-every steps),
// so a usable model exists long before the last step.
//
// Usage: node scripts/train-builtin.js [--vae-steps 1800] [--unet-steps 64000] [--decoder-steps 6000] [--save-every 1500]
//          [--work .cache/builtin] [--model-dir models/builtin] [--tokenizer DIR] [--device cpu|cuda|auto] [--init DIR] [--export-only]
// Needs `npm run build:ts` (it runs dist/). Times on a 2-core CPU: see docs/builtin-model.md.
"use strict";
const fs = require("fs");
const path = require("path");

const ROOT = path.join(__dirname, "..");
const DEFAULTS = {
  vaeSteps: 1800,
  unetSteps: 64000,
  initSteps: 24000,
  decoderSteps: 6000,
  saveEvery: 1500,
  work: path.join(ROOT, ".cache", "builtin"),
  modelDir: path.join(ROOT, "models", "builtin"),
  data: path.join(ROOT, ".cache", "emoji", "train"),
  tokenizer: null,
  device: "cpu",
  init: null,
  exportOnly: false,
};

// the recipe (kept here so a rerun reproduces the shipped model)
const VAE_RECIPE = { resolution: 64, batchSize: 8, lr: 1e-3, lrSchedule: "cosine", seed: 0 };
const DECODER_RECIPE = { resolution: 64, batchSize: 8, lr: 3e-4, lrSchedule: "cosine", warmupSteps: 100, trainEncoder: false, seed: 1 };
// UNet: the "small" preset widened to (48, 96, 96) with 8-channel heads (3.7 M parameters)
const UNET_CONFIG = {
  block_out_channels: [48, 96, 96],
  down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  layers_per_block: 1,
  norm_num_groups: 8,
  attention_head_dim: 8,
};
const UNET_RECIPE = {
  resolution: 64, model: UNET_CONFIG, textEncoder: "train", textEncoderSize: "small", batchSize: 8, lr: 1e-3, lrSchedule: "cosine",
  warmupSteps: 200, ema: 0.999, condDropout: 0.1, randomFlip: false, seed: 0,
};
// --init: the same, from a trained model at half the learning rate
const INIT_LR = 5e-4;

function parseArgs(argv) {
  const o = { ...DEFAULTS };
  const num = (i) => {
    const v = Number(argv[i]);
    if (!Number.isInteger(v) || v < 0) throw new Error(`${argv[i - 1]} needs a non-negative integer`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--vae-steps") o.vaeSteps = num(++i);
    else if (a === "--unet-steps") o.unetSteps = num(++i);
    else if (a === "--decoder-steps") o.decoderSteps = num(++i);
    else if (a === "--save-every") o.saveEvery = num(++i);
    else if (a === "--work") o.work = path.resolve(argv[++i]);
    else if (a === "--model-dir") o.modelDir = path.resolve(argv[++i]);
    else if (a === "--data") o.data = path.resolve(argv[++i]);
    else if (a === "--tokenizer") o.tokenizer = path.resolve(argv[++i]);
    else if (a === "--device" || a === "--init") {
      const v = argv[++i];
      if (!v) throw new Error(`${a} needs a value`);
      if (a === "--device") o.device = v;
      else o.init = path.resolve(v);
    }
    else if (a === "--export-only") o.exportOnly = true;
    else if (a === "--help" || a === "-h") {
      process.stdout.write(fs.readFileSync(__filename, "utf8").split("\n").filter((l) => l.startsWith("//")).map((l) => l.slice(3)).join("\n") + "\n");
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  // a fine-tune keeps its own work folder (the from-scratch checkpoints in .cache/builtin stay)
  if (o.init && !argv.includes("--work")) o.work = path.join(ROOT, ".cache", "builtin-init");
  if (o.init && !argv.includes("--unet-steps")) o.unetSteps = o.initSteps;
  return o;
}

/** A full CLIP tokenizer to trim: --tokenizer, the reference models' one, or the shipped (already trimmed) one. */
function findTokenizer(o) {
  const refDir = process.env.DIFFUSEKIT_REFERENCE_DIR || path.join(ROOT, "..", "shared", "reference");
  const candidates = [o.tokenizer, path.join(refDir, "models", "tiny-sd", "tokenizer"), path.join(o.modelDir, "tokenizer")];
  for (const c of candidates) if (c && fs.existsSync(path.join(c, "vocab.json")) && fs.existsSync(path.join(c, "merges.txt"))) return c;
  return undefined;  // the trainer falls back to a byte-level vocabulary
}

function log(msg) {
  process.stderr.write(`[train-builtin ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function hasCheckpoint(dir) {
  return fs.existsSync(path.join(dir, "checkpoint", "state.json"));
}

/** Copies a safetensors file with every F32 tensor stored as F16. */
function toFloat16(src, dst) {
  const { SafetensorsFile, writeSafetensors, bytesToFloat32 } = require(path.join(ROOT, "dist", "io", "safetensors"));
  const { float32ToFloat16 } = require(path.join(ROOT, "dist", "io", "half"));
  const f = SafetensorsFile.open(src);
  const tensors = {};
  try {
    for (const k of f.keys()) {
      const info = f.info(k);
      const bytes = f.read(k);
      if (info.dtype === "F32") {
        const x = bytesToFloat32(bytes, "F32");
        for (const v of x) if (Math.abs(v) > 65000) throw new Error(`${src}: ${k} has a value ${v} outside float16's range`);
        tensors[k] = { dtype: "F16", shape: info.shape, data: float32ToFloat16(x) };
      } else {
        tensors[k] = { dtype: info.dtype, shape: info.shape, data: new Uint8Array(bytes) };
      }
    }
  } finally {
    f.close();
  }
  writeSafetensors(dst, tensors, { format: "pt" });
}

const NOTICE = `The built-in model was trained on the Noto Color Emoji images (Google) as packaged in
emoji-datasource-google@16.0.0 (https://github.com/iamcal/emoji-data).

Noto Emoji images (https://github.com/googlefonts/noto-emoji): Copyright Google Inc., licensed under
the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). These weights are a
derivative work of those images.
emoji-datasource (emoji.json, the captions' names and short names): Copyright (c) 2013 Cal Henderson,
MIT License.
`;

/**
 * models/builtin from a trained model folder: configs, tokenizer, float16 weights, no checkpoint;
 * vae/ from `vaeDir` instead when given (the fine-tuned decoder).
 */
function exportModel(src, dst, vaeDir = null) {
  if (!fs.existsSync(path.join(src, "model_index.json"))) throw new Error(`${src} holds no exported model yet`);
  const tmp = `${dst}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  fs.copyFileSync(path.join(src, "model_index.json"), path.join(tmp, "model_index.json"));
  for (const comp of ["scheduler", "tokenizer", "text_encoder", "unet", "vae"]) {
    const from = comp === "vae" && vaeDir ? vaeDir : path.join(src, comp), to = path.join(tmp, comp);
    fs.mkdirSync(to, { recursive: true });
    for (const f of fs.readdirSync(from)) {
      const p = path.join(from, f);
      if (!fs.statSync(p).isFile() || f.startsWith(".")) continue;
      if (f.endsWith(".safetensors")) toFloat16(p, path.join(to, f));
      else fs.copyFileSync(p, path.join(to, f));
    }
  }
  fs.writeFileSync(path.join(tmp, "NOTICE-emoji.txt"), NOTICE);
  fs.rmSync(dst, { recursive: true, force: true });
  fs.renameSync(tmp, dst);
  let bytes = 0;
  const walk = (d) => { for (const f of fs.readdirSync(d)) { const p = path.join(d, f); const s = fs.statSync(p); if (s.isDirectory()) walk(p); else bytes += s.size; } };
  walk(dst);
  log(`exported ${dst} (${(bytes / 1e6).toFixed(2)} MB)`);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const modelOut = path.join(o.work, "model"), vaeOut = path.join(o.work, "vae"), decoderOut = path.join(o.work, "vae-decoder");
  const finishedDecoder = () => !o.init && require(path.join(ROOT, "dist", "train", "vae-trainer")).isFinishedVae(decoderOut) ? decoderOut : null;
  if (o.exportOnly) return exportModel(modelOut, o.modelDir, finishedDecoder());
  if (o.init && o.tokenizer) throw new Error("--tokenizer is for training from scratch; --init keeps init's tokenizer");
  if (!fs.existsSync(path.join(ROOT, "dist", "train", "index.js"))) throw new Error("dist/ is missing: run `npm run build:ts` first");
  const { trainVae, train } = require(path.join(ROOT, "dist", "train"));
  const { progressPrinter } = require(path.join(ROOT, "dist", "cli", "train"));

  // 1. data
  if (!fs.existsSync(o.data)) {
    log("fetching the emoji data");
    require("./fetch-emoji").main();
  }
  fs.mkdirSync(o.work, { recursive: true });
  const t0 = Date.now();

  // 2. VAE (with --init: init's)
  const { isFinishedVae } = require(path.join(ROOT, "dist", "train", "vae-trainer"));
  if (!o.init && !isFinishedVae(vaeOut)) {
    log(`training the VAE (${o.vaeSteps} steps)`);
    const r = await trainVae({ ...VAE_RECIPE, data: o.data, out: vaeOut, steps: o.vaeSteps, saveEvery: o.saveEvery, resume: hasCheckpoint(vaeOut), device: o.device,
      onLog: progressPrinter(process.stderr) });
    if (r.interrupted) return log("stopped; run again to continue");
    log(`VAE done in ${((Date.now() - t0) / 60000).toFixed(1)} min, scaling_factor ${r.scalingFactor.toPrecision(5)}`);
  }

  // 3. UNet + text encoder
  const t1 = Date.now();
  let recipe;
  if (o.init) {
    // the architecture, text encoder, tokenizer, VAE and noise schedule are init's
    const { model, textEncoderSize, ...rest } = UNET_RECIPE;
    recipe = { ...rest, lr: INIT_LR, init: o.init };
    log(`fine-tuning ${o.init}'s UNet and text encoder (${o.unetSteps} steps) on ${o.device}`);
  } else {
    const tokenizer = findTokenizer(o);
    recipe = { ...UNET_RECIPE, vae: vaeOut, tokenizer };
    log(`training the UNet and text encoder (${o.unetSteps} steps; tokenizer ${tokenizer ?? "byte-level"}) on ${o.device}`);
  }
  const r = await train({ ...recipe, data: o.data, out: modelOut, steps: o.unetSteps, saveEvery: o.saveEvery, device: o.device,
    resume: hasCheckpoint(modelOut), onLog: progressPrinter(process.stderr) });
  if (r.interrupted) return log("stopped; run again to continue");
  log(`UNet done in ${((Date.now() - t1) / 60000).toFixed(1)} min (${r.imagesPerSec.toFixed(1)} img/s)`);

  // 4. decoder fine-tuning (the UNet's latents come from the frozen encoder, so it stays valid)
  if (!o.init && o.decoderSteps > 0 && !finishedDecoder()) {
    const t2 = Date.now();
    log(`fine-tuning the VAE decoder (${o.decoderSteps} steps, encoder frozen)`);
    const d = await trainVae({ ...DECODER_RECIPE, data: o.data, out: decoderOut, init: vaeOut, steps: o.decoderSteps, saveEvery: o.saveEvery, device: o.device,
      resume: hasCheckpoint(decoderOut), onLog: progressPrinter(process.stderr) });
    if (d.interrupted) return log("stopped; run again to continue");
    log(`decoder done in ${((Date.now() - t2) / 60000).toFixed(1)} min (${d.imagesPerSec.toFixed(1)} img/s)`);
  }

  // 5. export
  exportModel(modelOut, o.modelDir, !o.init && o.decoderSteps > 0 ? finishedDecoder() : null);
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`train-builtin: ${e.stack || e.message}\n`);
    process.exit(1);
  });
}
module.exports = { exportModel, toFloat16, NOTICE };
