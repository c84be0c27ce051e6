// Optimisers for training: AdamW (torch.optim.AdamW), the EMA of diffusers' EMAModel, and
// global-norm gradient clipping (torch.nn.utils.clip_grad_norm_). The updates are fused native
// kernels working in place (native/cpu/optim.cc, native/cuda/optim.cu), on the parameters'
// device (state and EMA shadows are made there too); nothing here records onto the autograd
// tape or waits for the device.
import { Tensor, keep } from "../tensor";
import { rawNative } from "../autograd";

type Params = Iterable<Tensor> | Iterable<[string, Tensor]>;

function tensorsOf(params: Params, what: string): Tensor[] {
  const list = [...(params as Iterable<Tensor | [string, Tensor]>)].map((p) => (Array.isArray(p) ? p[1] : p));
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new TypeError(`${what}: params[${i}] must be a Tensor`);
    if (t.disposed) throw new TypeError(`${what}: params[${i}] is disposed`);
    if (t.dtype !== "float32") throw new TypeError(`${what}: params[${i}] must be float32, got ${t.dtype}`);
    if (!t.isContiguous) throw new RangeError(`${what}: params[${i}] must be contiguous (it is updated in place)`);
  });
  return list;
}

function checkNumber(what: string, name: string, v: number, ok: (v: number) => boolean, range: string): number {
  if (typeof v !== "number" || !ok(v)) throw new RangeError(`${what}: ${name} must be ${range}, got ${v}`);
  return v;
}

export interface AdamWOptions {
  /** Learning rate (default 1e-3; may be changed between steps, e.g. by a schedule). */
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** Decoupled weight decay (default 1e-2), applied as p <- p (1 - lr wd) before the Adam step. */
  weightDecay?: number;
}

interface AdamState { expAvg: Tensor; expAvgSq: Tensor; step: number }

/**
 * AdamW as torch.optim.AdamW (amsgrad off): per parameter with a gradient,
 *   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
 *   p <- p - lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)
 * in one fused in-place kernel. Parameters without a gradient are skipped (their step count
 * does not advance), as in torch.
 */
export class AdamW {
  readonly params: Tensor[];
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  private readonly states = new Map<Tensor, AdamState>();

  constructor(params: Params, opts: AdamWOptions = {}) {
    const W = "AdamW";
    this.params = tensorsOf(params, W);
    this.lr = checkNumber(W, "lr", opts.lr ?? 1e-3, (v) => v >= 0, ">= 0");
    const [b1, b2] = opts.betas ?? [0.9, 0.999];
    checkNumber(W, "betas[0]", b1, (v) => v >= 0 && v < 1, "in [0, 1)");
    checkNumber(W, "betas[1]", b2, (v) => v >= 0 && v < 1, "in [0, 1)");
    this.betas = [b1, b2];
    this.eps = checkNumber(W, "eps", opts.eps ?? 1e-8, (v) => v >= 0, ">= 0");
    this.weightDecay = checkNumber(W, "weightDecay", opts.weightDecay ?? 1e-2, (v) => v >= 0, ">= 0");
  }

  /** The moments and step count of a parameter (undefined before its first step). */
  state(p: Tensor): Readonly<AdamState> | undefined { return this.states.get(p); }

  /** One update of every parameter that has a gradient. */
  step(): void {
    checkNumber("AdamW", "lr", this.lr, (v) => v >= 0, ">= 0");
    const groups = new Map<number, { p: Tensor[]; g: Tensor[]; m: Tensor[]; v: Tensor[] }>();
    for (const p of this.params) {
      if (p.disposed) throw new TypeError("AdamW.step: a parameter was disposed");
      const g = p.grad;
      if (!g) continue;
      let s = this.states.get(p);
      if (!s) {
        s = { expAvg: Tensor.zeros(p.shape, { device: p.device }), expAvgSq: Tensor.zeros(p.shape, { device: p.device }), step: 0 };
        keepOut(s.expAvg, s.expAvgSq);
        this.states.set(p, s);
      }
      s.step++;
      let grp = groups.get(s.step);
      if (!grp) groups.set(s.step, grp = { p: [], g: [], m: [], v: [] });
      grp.p.push(p); grp.g.push(g); grp.m.push(s.expAvg); grp.v.push(s.expAvgSq);
    }
    const raw = rawNative();
    for (const [step, grp] of groups)
      raw.adamwStep(grp.p.map((t) => t.handle), grp.g.map((t) => t.handle), grp.m.map((t) => t.handle), grp.v.map((t) => t.handle),
        this.lr, this.betas[0], this.betas[1], this.eps, this.weightDecay, step);
  }

  /** Disposes and clears every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.params) if (!p.disposed && p.grad) p.grad = null;
  }

  /**
   * Replaces a parameter's moments and step count (resuming from a checkpoint). The optimiser
   * takes ownership of the two tensors (same shape as the parameter, float32, contiguous).
   */
  loadState(p: Tensor, s: { expAvg: Tensor; expAvgSq: Tensor; step: number }): void {
    if (!this.params.includes(p)) throw new RangeError("AdamW.loadState: not one of this optimiser's parameters");
    for (const [name, t] of [["expAvg", s.expAvg], ["expAvgSq", s.expAvgSq]] as const) {
      if (t.dtype !== "float32" || !t.isContiguous || t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i]))
        throw new RangeError(`AdamW.loadState: ${name} must be contiguous float32 [${p.shape.join(",")}], got ${t.dtype} [${t.shape.join(",")}]`);
    }
    if (!Number.isInteger(s.step) || s.step < 1) throw new RangeError(`AdamW.loadState: step must be a positive integer, got ${s.step}`);
    const old = this.states.get(p);
    if (old) { old.expAvg.dispose(); old.expAvgSq.dispose(); }
    keepOut(s.expAvg, s.expAvgSq);
    this.states.set(p, { expAvg: s.expAvg, expAvgSq: s.expAvgSq, step: s.step });
  }

  /** Frees the moments. */
  dispose(): void {
    for (const s of this.states.values()) { s.expAvg.dispose(); s.expAvgSq.dispose(); }
    this.states.clear();
  }
}

// Optimiser state outlives any tidy() scope the step runs in.
function keepOut(...ts: Tensor[]): void {
  for (const t of ts) keep(t);
}

export interface EMAOptions {
  /** Upper bound of the decay (default 0.9999). */
  decay?: number;
  minDecay?: number;
  /** Updates before this count copy nothing in (decay 0 until then; default 0). */
  updateAfterStep?: number;
  /** Warmup decay 1 - (1 + step/invGamma)^-power instead of (1 + step) / (10 + step). */
  useEmaWarmup?: boolean;
  invGamma?: number;
  power?: number;
}

/**
 * Exponential moving average of parameters, as diffusers' EMAModel: after the n-th optimiser
 * step, s = max(0, n - updateAfterStep - 1), decay = 0 if s = 0 else (1 + s)/(10 + s) (or the
 * warmup form), clamped to [minDecay, decay]; shadow <- shadow - (1 - decay)(shadow - param).
 */
export class EMA {
  readonly shadow: Tensor[];
  readonly decay: number;
  readonly minDecay: number;
  readonly updateAfterStep: number;
  readonly useEmaWarmup: boolean;
  readonly invGamma: number;
  readonly power: number;
  optimizationStep = 0;

  constructor(params: Params, opts: EMAOptions = {}) {
    const W = "EMA";
    const list = tensorsOf(params, W);
    this.decay = checkNumber(W, "decay", opts.decay ?? 0.9999, (v) => v >= 0 && v <= 1, "in [0, 1]");
    this.minDecay = checkNumber(W, "minDecay", opts.minDecay ?? 0, (v) => v >= 0 && v <= 1, "in [0, 1]");
    this.updateAfterStep = checkNumber(W, "updateAfterStep", opts.updateAfterStep ?? 0, (v) => Number.isInteger(v) && v >= 0, "an integer >= 0");
    this.useEmaWarmup = opts.useEmaWarmup ?? false;
    this.invGamma = checkNumber(W, "invGamma", opts.invGamma ?? 1, (v) => v > 0, "> 0");
    this.power = checkNumber(W, "power", opts.power ?? 2 / 3, (v) => v > 0, "> 0");
    const raw = rawNative();
    this.shadow = list.map((p) => new Tensor(raw.clone(p.handle)));
    keepOut(...this.shadow);
  }

  /** The decay used for the `optimizationStep`-th update (diffusers' get_decay). */
  getDecay(optimizationStep: number): number {
    const step = Math.max(0, optimizationStep - this.updateAfterStep - 1);
    if (step <= 0) return 0;
    const cur = this.useEmaWarmup ? 1 - (1 + step / this.invGamma) ** -this.power : (1 + step) / (10 + step);
    return Math.max(Math.min(cur, this.decay), this.minDecay);
  }

  /** Moves the shadow towards `params` (same order and shapes as at construction). */
  step(params: Params): void {
    const list = tensorsOf(params, "EMA.step");
    if (list.length !== this.shadow.length) throw new RangeError(`EMA.step: expected ${this.shadow.length} params, got ${list.length}`);
    this.optimizationStep++;
    const decay = this.getDecay(this.optimizationStep);
    rawNative().emaUpdate(this.shadow.map((t) => t.handle), list.map((t) => t.handle), decay);
  }

  /** Writes the averaged values into `params` (e.g. before saving or sampling). */
  copyTo(params: Params): void {
    const list = tensorsOf(params, "EMA.copyTo");
    if (list.length !== this.shadow.length) throw new RangeError(`EMA.copyTo: expected ${this.shadow.length} params, got ${list.length}`);
    const raw = rawNative();
    list.forEach((p, i) => raw.copyInPlace(p.handle, this.shadow[i].handle));
  }

  /** Restores the averages and the update count (resuming from a checkpoint); `values` are copied. */
  loadState(values: readonly Tensor[], optimizationStep: number): void {
    if (values.length !== this.shadow.length) throw new RangeError(`EMA.loadState: expected ${this.shadow.length} tensors, got ${values.length}`);
    if (!Number.isInteger(optimizationStep) || optimizationStep < 0)
      throw new RangeError(`EMA.loadState: optimizationStep must be an integer >= 0, got ${optimizationStep}`);
    const raw = rawNative();
    values.forEach((v, i) => {
      const s = this.shadow[i];
      if (v.shape.length !== s.shape.length || v.shape.some((d, j) => d !== s.shape[j]))
        throw new RangeError(`EMA.loadState: tensor ${i} has shape [${v.shape.join(",")}], expected [${s.shape.join(",")}]`);
      raw.copyInPlace(s.handle, v.handle);
    });
    this.optimizationStep = optimizationStep;
  }

  dispose(): void {
    for (const t of this.shadow) t.dispose();
  }
}

export type LrScheduleName = "constant" | "cosine";
export const LR_SCHEDULES: readonly LrScheduleName[] = ["constant", "cosine"];

export interface LrSchedule {
  lr: number;
  /** Linear warm-up over this many optimiser steps (default 0). */
  warmupSteps?: number;
  /** After the warm-up: "constant" (default) or "cosine" decay to 0 at totalSteps. */
  schedule?: LrScheduleName;
  totalSteps: number;
}

/**
 * The learning rate of optimiser step `step` (1-based): lr·step/warmup during the warm-up (so the
 * first step already moves, unlike diffusers' LambdaLR which starts at 0), then constant or
 * lr·½(1 + cos(π·(step − warmup)/(total − warmup))).
 */
export function learningRateAt(step: number, s: LrSchedule): number {
  const warm = s.warmupSteps ?? 0;
  const kind = s.schedule ?? "constant";
  if (!LR_SCHEDULES.includes(kind)) throw new RangeError(`lrSchedule must be one of ${LR_SCHEDULES.join(", ")}, got ${JSON.stringify(kind)}`);
  if (warm > 0 && step <= warm) return (s.lr * step) / warm;
  if (kind === "constant") return s.lr;
  const span = Math.max(1, s.totalSteps - warm);
  const progress = Math.min(1, Math.max(0, (step - warm) / span));
  return s.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/**
 * torch.nn.utils.clip_grad_norm_: total = ||(||g_i||_2)_i||_2 over the gradients of `params`,
 * and every gradient is multiplied in place by min(maxNorm / (total + 1e-6), 1). Returns the
 * total norm (before clipping) as a float32 [1] tensor; nothing waits for the device.
 */
export function clipGradNorm(params: Params, maxNorm: number): Tensor {
  checkNumber("clipGradNorm", "maxNorm", maxNorm, (v) => v > 0, "> 0");
  const grads = [...(params as Iterable<Tensor | [string, Tensor]>)]
    .map((p) => (Array.isArray(p) ? p[1] : p).grad)
    .filter((g): g is Tensor => g !== null);
  return new Tensor(rawNative().clipGradNorm(grads.map((g) => g.handle), maxNorm));
}

/** The L2 norm of each parameter's gradient (0 for none), as float32 [n]. */
export function gradNorms(params: Params): Tensor {
  const raw = rawNative();
  const list = [...(params as Iterable<Tensor | [string, Tensor]>)].map((p) => (Array.isArray(p) ? p[1] : p));
  const zeros: Tensor[] = [];
  const hs = list.map((p) => {
    if (p.grad) return p.grad.handle;
    const z = Tensor.zeros([1], { device: p.device });  // with the gradients (one device per call)
    zeros.push(z);
    return z.handle;
  });
  try {
    return new Tensor(raw.gradNorms(hs));
  } finally {
    for (const z of zeros) z.dispose();
  }
}
