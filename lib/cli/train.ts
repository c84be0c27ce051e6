// `diffusekit train` and `diffusekit train-vae`: option tables, argv parsing, and a progress line
// on stderr (step, loss, images/s, ETA). Thin: everything else is lib/train.
//
//   diffusekit train --data DIR --out DIR [--resolution 64 --steps 1000 --batch-size 8 --lr 5e-4
//     --seed 0 --save-every 0 --resume --cond-dropout 0.1 --vae DIR --model small|base ...]
//   diffusekit train --init MODEL_DIR --data DIR --out DIR [...]   (fine-tune a diffusers model)
//   diffusekit train-vae --data DIR --out DIR [--resolution 64 --steps 1000 --latent-channels 4 ...]
//
// `--data shapes` (or shapes:N) trains on the built-in synthetic shapes set.
import { train, type TrainOptions } from "../train/trainer";
import { trainVae, type TrainVaeOptions } from "../train/vae-trainer";
import { MIXED_PRECISIONS, type TrainLogInfo } from "../train/loop";

export type FlagType = "int" | "number" | "string" | "boolean" | "ints" | "strings";

export interface FlagSpec {
  /** "--batch-size" */
  flag: string;
  /** The option it sets ("batchSize"). */
  key: string;
  type: FlagType;
  help: string;
  required?: boolean;
  /** The value a boolean flag sets (default true). */
  sets?: boolean;
  /** Values a string flag accepts. */
  choices?: readonly string[];
}

const COMMON: FlagSpec[] = [
  { flag: "--data", key: "data", type: "string", required: true, help: 'image folder (same-name .txt captions, one or more lines, or metadata.jsonl), or "shapes[:N]" for the built-in set' },
  { flag: "--out", key: "out", type: "string", required: true, help: "output folder" },
  { flag: "--resolution", key: "resolution", type: "int", help: "square training size in pixels (default 64)" },
  { flag: "--steps", key: "steps", type: "int", help: "optimiser steps (default 1000)" },
  { flag: "--batch-size", key: "batchSize", type: "int", help: "images per micro-batch (default 8)" },
  { flag: "--grad-accum", key: "gradAccum", type: "int", help: "micro-batches per optimiser step (default 1)" },
  { flag: "--lr", key: "lr", type: "number", help: "learning rate (default 5e-4; train --init: 1e-4)" },
  { flag: "--lr-schedule", key: "lrSchedule", type: "string", choices: ["constant", "cosine"], help: "after warm-up: constant (default) or cosine" },
  { flag: "--warmup-steps", key: "warmupSteps", type: "int", help: "linear warm-up steps (default min(100, steps/10))" },
  { flag: "--max-grad-norm", key: "maxGradNorm", type: "number", help: "clip the global gradient norm (default 1; 0 = off)" },
  { flag: "--seed", key: "seed", type: "int", help: "seed of weights, data order and noise (default 0)" },
  { flag: "--save-every", key: "saveEvery", type: "int", help: "checkpoint every N steps (default: at the end and on Ctrl-C)" },
  { flag: "--resume", key: "resume", type: "boolean", help: "continue from OUT/checkpoint" },
  { flag: "--no-flip", key: "randomFlip", type: "boolean", sets: false, help: "no random horizontal flips" },
  { flag: "--background", key: "background", type: "string", help: "colour behind transparent pixels, #rrggbb (default #ffffff)" },
  { flag: "--resample", key: "resample", type: "string", choices: ["area", "bilinear"], help: "resize filter (default area)" },
  { flag: "--device", key: "device", type: "string", help: "cpu (default), cuda, cuda:N or auto (a GPU when one answers)" },
  { flag: "--mixed-precision", key: "mixedPrecision", type: "string", choices: MIXED_PRECISIONS, help: "bf16: the network computes on bfloat16 copies of float32 master weights (default no: float32)" },
];

export const TRAIN_FLAGS: readonly FlagSpec[] = [
  ...COMMON,
  { flag: "--init", key: "init", type: "string", help: "fine-tune this diffusers model folder (its UNet, VAE, text encoder, tokenizer and noise schedule)" },
  { flag: "--model", key: "model", type: "string", choices: ["small", "base"], help: "UNet size (default small; not with --init)" },
  { flag: "--text-encoder", key: "textEncoder", type: "string",
    help: '"train" (trained jointly: from scratch, or with --init from init\'s) or a model folder whose text encoder is used frozen (default: "train", or init\'s frozen with --init)' },
  { flag: "--text-encoder-size", key: "textEncoderSize", type: "string", choices: ["small", "base"], help: "size of a text encoder trained from scratch (default small)" },
  { flag: "--tokenizer", key: "tokenizer", type: "string", help: "CLIP tokenizer folder (vocab.json, merges.txt) for a text encoder trained from scratch" },
  { flag: "--vae", key: "vae", type: "string", help: "a trained VAE folder (default: init's with --init, else train one first into OUT/vae)" },
  { flag: "--vae-steps", key: "vaeSteps", type: "int", help: "steps of that VAE when --vae is not given (default 1000)" },
  { flag: "--cond-dropout", key: "condDropout", type: "number", help: "probability of the empty prompt (default 0.1)" },
  { flag: "--prediction-type", key: "predictionType", type: "string", choices: ["epsilon", "v_prediction"], help: "training target (default epsilon; with --init, init's)" },
  { flag: "--snr-gamma", key: "snrGamma", type: "number", help: "Min-SNR-γ loss weighting, e.g. 5 (default off)" },
  { flag: "--ema", key: "ema", type: "number", help: "keep an EMA of the weights with this decay (e.g. 0.999) and export it" },
  { flag: "--lora", key: "lora", type: "boolean", help: "with --init: train LoRA adapters on the U-Net's attention (rank 4) and write OUT/lora.safetensors" },
  { flag: "--lora-rank", key: "loraRank", type: "int", help: "LoRA rank (implies --lora; default 4)" },
  { flag: "--lora-alpha", key: "loraAlpha", type: "number", help: "LoRA alpha: the branch is scaled by alpha/rank (default: the rank)" },
  { flag: "--lora-text-encoder", key: "loraTextEncoder", type: "boolean", help: "LoRA adapters on the text encoder's attention and MLP too (implies --lora)" },
  { flag: "--lora-conv-rank", key: "loraConvRank", type: "int", help: "LoCon: branches of this rank on the U-Net's 3x3 convolutions too (implies --lora; kohya's conv_dim)" },
  { flag: "--lora-conv-alpha", key: "loraConvAlpha", type: "number", help: "their alpha: scaled by alpha/conv rank (default: the conv rank)" },
  { flag: "--sample-prompt", key: "samplePrompt", type: "strings", help: "draw this prompt while training (repeatable; with --sample-every) into OUT/samples/" },
  { flag: "--sample-every", key: "sampleEvery", type: "int", help: "draw the sample prompts every N steps and after the last" },
  { flag: "--sample-steps", key: "sampleSteps", type: "int", help: "denoising steps of the samples (default 20)" },
  { flag: "--sample-seed", key: "sampleSeed", type: "int", help: "seed of the samples (default 0)" },
  { flag: "--textual-inversion", key: "tiToken", type: "string", help: "with --init: train the embedding of this new word (e.g. \"<my-cat>\") and write OUT/learned_embeds.safetensors (lr default 5e-3)" },
  { flag: "--ti-initializer", key: "tiInitializer", type: "string", help: "word(s) the new word's vectors start from (default: the vocabulary's mean)" },
  { flag: "--ti-vectors", key: "tiVectors", type: "int", help: "embedding vectors of the new word (default 1)" },
  { flag: "--ti-template", key: "tiTemplate", type: "string", choices: ["object", "style", "captions"],
    help: "prompts: templates for an object (default) or a style around the word, or the captions, which name it" },
];

export const TRAIN_VAE_FLAGS: readonly FlagSpec[] = [
  ...COMMON,
  { flag: "--latent-channels", key: "latentChannels", type: "int", help: "latent channels (default 4)" },
  { flag: "--block-out-channels", key: "blockOutChannels", type: "ints", help: "channels per level, comma-separated (default 32,64,64: a 4x VAE)" },
  { flag: "--init", key: "init", type: "string", help: "start from this trained VAE folder (its architecture; shape flags not allowed)" },
  { flag: "--decoder-only", key: "trainEncoder", type: "boolean", sets: false, help: "with --init: train only the decoder; latents and scaling factor stay init's" },
  { flag: "--kl-weight", key: "klWeight", type: "number", help: "β of the KL term (default 1e-6)" },
  { flag: "--reconstruction", key: "reconstruction", type: "string", choices: ["l1", "l2"], help: "reconstruction loss (default l1)" },
  { flag: "--gradient-weight", key: "gradientWeight", type: "number", help: "weight of the image-gradient term (default 0.1)" },
];

/** Parses argv (after the command name) against a flag table: `--flag value` or `--flag=value`. */
export function parseFlags(argv: readonly string[], table: readonly FlagSpec[], command: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const byFlag = new Map(table.map((f) => [f.flag, f]));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const spec = byFlag.get(name);
    if (!spec) throw new RangeError(`${command}: unknown option ${JSON.stringify(arg)} (try --help)`);
    if (spec.type === "boolean") {
      if (eq > 0) throw new RangeError(`${command}: ${name} takes no value`);
      out[spec.key] = spec.sets ?? true;
      continue;
    }
    const raw = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (raw === undefined) throw new RangeError(`${command}: ${name} needs a value`);
    // "strings": repeatable, each use adds one
    out[spec.key] = spec.type === "strings" ? [...((out[spec.key] as string[] | undefined) ?? []), raw] : convert(command, spec, raw);
  }
  for (const f of table) if (f.required && out[f.key] === undefined) throw new RangeError(`${command}: ${f.flag} is required`);
  return out;
}

function convert(command: string, spec: FlagSpec, raw: string): unknown {
  const bad = (what: string) => new RangeError(`${command}: ${spec.flag} must be ${what}, got ${JSON.stringify(raw)}`);
  switch (spec.type) {
    case "int": {
      if (!/^-?\d+$/.test(raw.trim())) throw bad("an integer");
      return Number(raw);
    }
    case "number": {
      const v = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(v)) throw bad("a number");
      return v;
    }
    case "ints": {
      const parts = raw.split(",").map((s) => s.trim());
      if (parts.some((p) => !/^\d+$/.test(p))) throw bad("comma-separated integers");
      return parts.map(Number);
    }
    default:
      if (spec.choices && !spec.choices.includes(raw)) throw bad(`one of ${spec.choices.join(", ")}`);
      return raw;
  }
}

export function usageText(command: string, table: readonly FlagSpec[]): string {
  const w = Math.max(...table.map((f) => f.flag.length)) + 2;
  const what = command === "train" ? "train a text-to-image model (diffusers layout)" : "train the latent autoencoder";
  return `Usage: diffusekit ${command} --data DIR --out DIR [options]   (${what})\n\nOptions:\n` +
    table.map((f) => `  ${(f.flag + (f.type === "boolean" ? "" : " <v>")).padEnd(w + 4)}${f.help}`).join("\n") + "\n";
}

/**
 * Moves the flags of one option object (flag key -> the object's key) out of `o`: the object of
 * those given, or null when none was; `flagOf` names a given one for errors.
 */
function takeGroup(o: Record<string, unknown>, names: Record<string, string>): { group: Record<string, unknown>; flagOf: (name: string) => string } | null {
  const given = Object.keys(names).filter((k) => o[k] !== undefined && o[k] !== false);
  const group = Object.fromEntries(given.map((k) => [names[k], o[k]]));
  for (const k of Object.keys(names)) delete o[k];
  const flagOf = (name: string) => TRAIN_FLAGS.find((f) => f.key === Object.keys(names).find((k) => names[k] === name))!.flag;
  return given.length ? { group, flagOf } : null;
}

export function parseTrainArgs(argv: readonly string[]): TrainOptions {
  const o = parseFlags(argv, TRAIN_FLAGS, "train") as Record<string, unknown>;
  // --lora-* make the lora option's object
  const lora = takeGroup(o, { loraRank: "rank", loraAlpha: "alpha", loraTextEncoder: "textEncoder", loraConvRank: "convRank", loraConvAlpha: "convAlpha" });
  if (lora) o.lora = lora.group;
  // --textual-inversion <word> and its --ti-* settings make the textualInversion option's object
  const ti = takeGroup(o, { tiToken: "token", tiInitializer: "initializer", tiVectors: "vectors", tiTemplate: "template" });
  if (ti && ti.group.token === undefined) throw new RangeError(`train: ${ti.flagOf(Object.keys(ti.group)[0])} goes with --textual-inversion <word>`);
  if (ti) o.textualInversion = ti.group;
  // --sample-prompt and --sample-* make the samples option's object
  const samples = takeGroup(o, { samplePrompt: "prompts", sampleEvery: "every", sampleSteps: "steps", sampleSeed: "seed" });
  if (samples && (samples.group.prompts === undefined || samples.group.every === undefined)) throw new RangeError("train: --sample-prompt and --sample-every go together");
  if (samples) o.samples = samples.group;
  return o as unknown as TrainOptions;
}

export function parseTrainVaeArgs(argv: readonly string[]): TrainVaeOptions {
  return parseFlags(argv, TRAIN_VAE_FLAGS, "train-vae") as unknown as TrainVaeOptions;
}

export function formatDuration(sec: number): string {
  if (!Number.isFinite(sec)) return "?";
  const s = Math.round(sec);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** The progress line for one record. */
export function formatProgress(i: TrainLogInfo): string {
  const width = String(i.steps).length;
  return `${i.phase} step ${String(i.step).padStart(width)}/${i.steps}  loss ${i.loss.toFixed(4)}  lr ${i.lr.toExponential(1)}  ` +
    `${i.imagesPerSec.toFixed(1)} img/s  ETA ${formatDuration(i.etaSec)}`;
}

export interface ProgressSink {
  write(s: string): unknown;
  isTTY?: boolean;
}

/** onLog for a terminal: one self-overwriting line on a TTY (at most 5 updates/s), else a line every ~2% of the run. */
export function progressPrinter(stream: ProgressSink = process.stderr): (i: TrainLogInfo) => void {
  let last = 0, lastPhase = "";
  return (i) => {
    const line = formatProgress(i);
    const final = i.step === i.steps;
    if (stream.isTTY) {
      const now = Date.now();
      if (i.phase !== lastPhase && lastPhase) stream.write("\n");
      if (final || now - last >= 200 || i.phase !== lastPhase) {
        stream.write(`\r\x1b[2K${line}${final ? "\n" : ""}`);
        last = now;
      }
    } else if (final || i.step === 1 || i.step % Math.max(1, Math.floor(i.steps / 50)) === 0) {
      stream.write(line + "\n");
    }
    lastPhase = i.phase;
  };
}

/** Runs `train` with parsed options; returns the exit code (0 done, 130 stopped with a checkpoint). */
export async function runTrain(opts: TrainOptions, stream: ProgressSink = process.stderr): Promise<number> {
  const t0 = Date.now();
  const r = await train({ ...opts, onLog: opts.onLog ?? progressPrinter(stream), onWarn: opts.onWarn ?? ((m) => stream.write(`warning: ${m}\n`)) });
  const p = r.parameters;
  if (r.interrupted) {
    stream.write(`stopped at ${r.vae?.interrupted ? `VAE step ${r.vae.step}` : `step ${r.step}`} of ${r.vae?.interrupted ? r.vae.steps : r.steps}; ` +
      `checkpoint written: continue with --resume\n`);
    return 130;
  }
  if (r.losses.length === 0) stream.write(`the checkpoint is already at step ${r.step} (--steps ${r.steps}): nothing to train; model re-exported\n`);
  if (r.loraFile) {
    stream.write(`wrote ${r.loraFile} in ${formatDuration((Date.now() - t0) / 1000)}: LoRA ${((p.lora ?? 0) / 1e6).toFixed(3)} M parameters over a ` +
      `${(p.unet / 1e6).toFixed(2)} M-parameter U-Net; ${r.imagesPerSec.toFixed(1)} img/s (use it with --lora ${r.loraFile})\n`);
    return 0;
  }
  if (r.embeddingFile) {
    const word = opts.textualInversion!.token;
    stream.write(`wrote ${r.embeddingFile} in ${formatDuration((Date.now() - t0) / 1000)}: ${p.textualInversion ?? 0} trained values for ${word}; ` +
      `${r.imagesPerSec.toFixed(1)} img/s (use it with --embedding ${r.embeddingFile} and "${word}" in the prompt)\n`);
    return 0;
  }
  stream.write(`wrote ${r.out} in ${formatDuration((Date.now() - t0) / 1000)}: UNet ${(p.unet / 1e6).toFixed(2)} M, text encoder ${(p.textEncoder / 1e6).toFixed(2)} M, ` +
    `VAE ${(p.vae / 1e6).toFixed(2)} M parameters; ${r.imagesPerSec.toFixed(1)} img/s` +
    (r.skippedImages ? `; ${r.skippedImages} unreadable file(s) skipped` : "") + "\n");
  return 0;
}

export async function runTrainVae(opts: TrainVaeOptions, stream: ProgressSink = process.stderr): Promise<number> {
  const t0 = Date.now();
  const r = await trainVae({ ...opts, onLog: opts.onLog ?? progressPrinter(stream), onWarn: opts.onWarn ?? ((m) => stream.write(`warning: ${m}\n`)) });
  if (r.interrupted) {
    stream.write(`stopped at step ${r.step} of ${r.steps}; checkpoint written: continue with --resume\n`);
    return 130;
  }
  stream.write(`wrote ${r.out} in ${formatDuration((Date.now() - t0) / 1000)}: scaling_factor ${r.scalingFactor.toPrecision(5)}, ${r.imagesPerSec.toFixed(1)} img/s` +
    (r.skippedImages ? `; ${r.skippedImages} unreadable file(s) skipped` : "") + "\n");
  return 0;
}

async function command<O>(argv: readonly string[], name: string, table: readonly FlagSpec[], parse: (argv: readonly string[]) => O, run: (o: O) => Promise<number>): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(usageText(name, table));
    return 0;
  }
  try {
    return await run(parse(argv));
  } catch (e) {
    process.stderr.write(`diffusekit ${name}: ${(e as Error).message}\n`);
    return e instanceof RangeError || e instanceof TypeError ? 2 : 1;
  }
}

/** `diffusekit train ...` (argv after "train"): parses, trains, prints; returns the exit code. */
export function trainCommand(argv: readonly string[]): Promise<number> {
  return command(argv, "train", TRAIN_FLAGS, parseTrainArgs, (o) => runTrain(o));
}

/** `diffusekit train-vae ...`. */
export function trainVaeCommand(argv: readonly string[]): Promise<number> {
  return command(argv, "train-vae", TRAIN_VAE_FLAGS, parseTrainVaeArgs, (o) => runTrainVae(o));
}
