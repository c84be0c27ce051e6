// What the UNet and VAE trainers share: option checks, the data source, stopping (AbortSignal
// and SIGINT), throughput/ETA bookkeeping and the progress record handed to onLog.
import * as fs from "fs";
import { devices, resolveDevice } from "../devices";
import { openImageFolder, checkResolution, type Colour, type ResampleMethod, type TrainingDataset } from "./data";
import { createShapesDataset } from "./shapes";
import { clipGradNorm, type LrScheduleName } from "./optim";
import type { Tensor } from "../tensor";

/** One progress record (after every `logEvery`-th optimiser step, and the last). */
export interface TrainLogInfo {
  phase: "vae" | "unet";
  /** Optimiser steps done (1-based) and the run's total. */
  step: number;
  steps: number;
  /** Mean loss over this step's micro-batches. */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  epoch: number;
  /** Training images per second since this run (or resume) started. */
  imagesPerSec: number;
  elapsedSec: number;
  etaSec: number;
  /** Phase-specific terms (VAE: reconstruction, kl; UNet: emptyPrompts...). */
  terms?: Record<string, number>;
}

export type DataOption = string | TrainingDataset;

export interface DataOptions {
  /** Folder dataset: RGBA is composited over this colour (default white). */
  background?: Colour;
  resample?: ResampleMethod;
  /** metadata.jsonl caption key (default "text"). */
  captionColumn?: string;
  onWarn?: (message: string) => void;
}

/** The options of the training loop that train() and trainVae() share. */
export interface LoopOptions extends DataOptions {
  /** Square training size (default 64). */
  resolution?: number;
  /** Optimiser steps (default 1000). */
  steps?: number;
  batchSize?: number;
  /** Micro-batches per optimiser step (default 1). */
  gradAccum?: number;
  lr?: number;
  lrSchedule?: LrScheduleName;
  warmupSteps?: number;
  weightDecay?: number;
  /** Global gradient-norm clip (default 1; 0 = off). */
  maxGradNorm?: number;
  randomFlip?: boolean;
  seed?: number;
  device?: string;
  /**
   * "bf16": the network's forward and backward run on bfloat16 copies of its weights, cast from
   * the float32 master weights every step (gradients, AdamW moments, EMA and the loss stay
   * float32), as accelerate's --mixed_precision bf16. Default "no" (float32 throughout).
   */
  mixedPrecision?: MixedPrecision;
  /** Checkpoint (and export) every this many steps; 0 = only at the end or when stopped. */
  saveEvery?: number;
  /** Continue from `<out>/checkpoint` (bit-identical to an uninterrupted run). */
  resume?: boolean;
  /**
   * Progress. Step k's numbers are read while step k + 1 is already queued (the device keeps
   * busy), so model weights seen from here may be a step ahead; a stop asked for here still ends
   * the run right after step k.
   */
  onLog?: (info: TrainLogInfo) => void;
  /** onLog every this many steps (default 1). */
  logEvery?: number;
  /** Aborting stops after the last completed step with a checkpoint. */
  signal?: AbortSignal;
  /** Also stop (with a checkpoint) on SIGINT. Default true. */
  handleSigint?: boolean;
}

export type MixedPrecision = "no" | "bf16";
export const MIXED_PRECISIONS: readonly MixedPrecision[] = ["no", "bf16"];

/** The compute dtype of a mixedPrecision option, or null for float32 throughout. */
export function mixedPrecisionDtype(op: string, v: unknown): "bfloat16" | null {
  if (v === undefined || v === "no") return null;
  if (v === "bf16") return "bfloat16";
  throw new RangeError(`${op}: mixedPrecision must be "no" or "bf16", got ${JSON.stringify(v)}`);
}

/** The keys of LoopOptions, for checkKeys. */
export const LOOP_KEYS = [
  "resolution", "steps", "batchSize", "gradAccum", "lr", "lrSchedule", "warmupSteps", "weightDecay", "maxGradNorm", "randomFlip",
  "seed", "device", "mixedPrecision", "saveEvery", "resume", "onLog", "logEvery", "signal", "handleSigint",
  "background", "resample", "captionColumn", "onWarn",
] as const;

export function checkKeys(op: string, opts: object, allowed: readonly string[]): void {
  if (opts === null || typeof opts !== "object") throw new TypeError(`${op}: options must be an object`);
  for (const k of Object.keys(opts))
    if (!allowed.includes(k) && (opts as Record<string, unknown>)[k] !== undefined)
      throw new RangeError(`${op}: unknown option "${k}" (allowed: ${allowed.join(", ")})`);
}

/** An option group's object (`lora`, `samples`, ...) has only the keys it knows. */
export function checkGroupKeys(op: string, group: string, o: object, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new RangeError(`${op}: ${group} has no option ${JSON.stringify(k)}`);
}

export function intOpt(op: string, name: string, v: unknown, dflt: number, min: number): number {
  const x = v === undefined ? dflt : v;
  if (typeof x !== "number" || !Number.isInteger(x) || x < min) throw new RangeError(`${op}: ${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return x;
}

export function numOpt(op: string, name: string, v: unknown, dflt: number, ok: (x: number) => boolean, range: string): number {
  const x = v === undefined ? dflt : v;
  if (typeof x !== "number" || !Number.isFinite(x) || !ok(x)) throw new RangeError(`${op}: ${name} must be ${range}, got ${JSON.stringify(v)}`);
  return x;
}

/**
 * The device a training run computes on, float32 either way: "cpu" (the default), or a CUDA
 * device that answered ("cuda" = "cuda:0"; "auto" = a GPU when one answers, else the CPU).
 * Asking for a GPU that is not there is an error that says so.
 */
export function trainingDevice(op: string, device: unknown): string {
  const d = device ?? "cpu";
  if (typeof d !== "string" || !/^(cpu|auto|cuda(:\d+)?)$/.test(d))
    throw new RangeError(`${op}: device must be "cpu", "auto", "cuda" or "cuda:N", got ${JSON.stringify(d)}`);
  if (d === "cpu") return "cpu";
  const resolved = resolveDevice(d);
  if (resolved === "cpu") return "cpu";
  const index = resolved === "cuda" ? 0 : Number(resolved.slice(5));
  const gpus = devices().filter((x) => x.type === "cuda");
  if (!gpus.some((g) => g.type === "cuda" && g.index === index))
    throw new Error(`${op}: device "${d}" was asked for, but ${gpus.length ? `only CUDA devices ${gpus.map((g) => (g.type === "cuda" ? g.index : "")).join(", ")} answered` : "no CUDA device answered (no GPU, no driver, or a CPU-only build)"}; use device "cpu" or "auto"`);
  return `cuda:${index}`;
}

/**
 * The dataset: a TrainingDataset, "shapes" / "shapes:N" (the built-in synthetic set, N images,
 * default 256), or a folder (see data.ts).
 */
export async function resolveData(op: string, data: DataOption, resolution: number, seed: number, opts: DataOptions): Promise<TrainingDataset> {
  checkResolution(resolution);
  if (typeof data === "string") {
    const m = /^shapes(?::(\d+))?$/.exec(data);
    if (m && !fs.existsSync(data)) return createShapesDataset({ count: m[1] ? Number(m[1]) : 256, resolution, seed, background: opts.background });
    return openImageFolder(data, { resolution, background: opts.background, resample: opts.resample, captionColumn: opts.captionColumn, onWarn: opts.onWarn });
  }
  if (data && typeof data === "object" && typeof data.image === "function" && typeof data.caption === "function" && Number.isInteger(data.size)) {
    if (data.resolution !== resolution)
      throw new RangeError(`${op}: the dataset holds ${data.resolution}x${data.resolution} images but resolution is ${resolution}`);
    return data;
  }
  throw new TypeError(`${op}: data must be a folder path, "shapes" or a TrainingDataset`);
}

/**
 * Stop requests: an AbortSignal and (optionally) SIGINT. The loop checks `stopped` after every
 * optimiser step, writes a checkpoint and returns. A second SIGINT while stopping restores the
 * default handling and re-raises it (the process ends).
 */
export class StopControl {
  stopped = false;
  reason: string | null = null;
  private readonly onSigint?: () => void;
  private readonly onAbort?: () => void;

  constructor(private readonly signal: AbortSignal | undefined, handleSigint: boolean) {
    if (signal) {
      if (signal.aborted) this.stop("aborted");
      else signal.addEventListener("abort", (this.onAbort = () => this.stop("aborted")), { once: true });
    }
    if (handleSigint) {
      this.onSigint = () => {
        if (this.stopped) {
          this.dispose();
          process.kill(process.pid, "SIGINT");
          return;
        }
        process.stderr.write("\ndiffusekit: SIGINT: saving a checkpoint after this step (press Ctrl-C again to quit at once)\n");
        this.stop("SIGINT");
      };
      process.on("SIGINT", this.onSigint);
    }
  }

  /** Aborted when a stop is requested (to hand to a nested run). */
  readonly controller = new AbortController();

  private stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.reason = reason;
    this.controller.abort();
  }

  dispose(): void {
    if (this.onSigint) process.removeListener("SIGINT", this.onSigint);
    if (this.onAbort) this.signal?.removeEventListener("abort", this.onAbort);
  }
}

/** Images/s and ETA for one run (counted from its first step, so a resumed run measures itself). */
export class Throughput {
  private readonly start = performance.now();
  private images = 0;
  private stepsDone = 0;
  constructor(private readonly stepsLeft: number) {}
  add(images: number): void {
    this.images += images;
    this.stepsDone++;
  }
  get elapsedSec(): number { return (performance.now() - this.start) / 1000; }
  get imagesPerSec(): number { return this.images / Math.max(1e-9, this.elapsedSec); }
  get etaSec(): number {
    return this.stepsDone ? (this.elapsedSec / this.stepsDone) * Math.max(0, this.stepsLeft - this.stepsDone) : NaN;
  }
}

export const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Reads a step's scalars (losses, gradient norm) one step late: hold() queues their reads right
 * behind the step's work, and the next step's flush() awaits them once that step's graph is
 * queued too, so the device never idles while the host builds a graph. flush() hands the values
 * (the first element of each tensor, in order) to `settled`, then frees the tensors.
 */
export class ReadBehind<Info> {
  private held: { reads: Promise<Float32Array>[]; owned: Tensor[]; info: Info } | null = null;

  constructor(private readonly settled: (values: number[], info: Info) => void) {}

  hold(scalars: Tensor[], info: Info): void {
    if (this.held) throw new Error("ReadBehind: flush() the held step before holding another");
    const reads = scalars.map((t) => {
      const r = t.toFloat32Array();
      r.catch(() => {});  // awaited by flush(); until then a failure must not count as unhandled
      return r;
    });
    this.held = { reads, owned: scalars, info };
  }

  async flush(): Promise<void> {
    const h = this.held;
    if (!h) return;
    this.held = null;
    const values: number[] = [];
    try {
      for (const r of h.reads) values.push((await r)[0]);
    } finally {
      for (const t of h.owned) t.dispose();
    }
    this.settled(values, h.info);
  }

  /** Frees a held step's tensors without reading them (an error path). */
  dispose(): void {
    if (this.held) for (const t of this.held.owned) t.dispose();
    this.held = null;
  }
}

/**
 * The end of an optimiser step, as both trainers run it: the clipped global gradient norm joins
 * the step's held scalars (read one step late), the update (and the EMA) is queued, and every
 * `saveEvery` steps a checkpoint is written once the step's numbers are in.
 */
export async function finishStep<Info>(s: {
  step: number; steps: number; params: Tensor[]; maxGradNorm: number; held: Tensor[]; info: Info; behind: ReadBehind<Info>;
  opt: { step(): void; zeroGrad(): void }; ema?: { step(params: Tensor[]): void } | null; saveEvery: number; save: (done: boolean) => Promise<unknown>;
}): Promise<void> {
  s.held.push(clipGradNorm(s.params, s.maxGradNorm > 0 ? s.maxGradNorm : Number.MAX_VALUE));
  s.behind.hold(s.held, s.info);
  s.opt.step();
  s.opt.zeroGrad();
  s.ema?.step(s.params);
  if (s.saveEvery > 0 && s.step % s.saveEvery === 0 && s.step < s.steps) {
    await s.behind.flush();
    await s.save(false);
  }
  await yieldToLoop();
}
