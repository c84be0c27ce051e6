// The autograd engine: a tape of nodes recorded at the native boundary.
//
// Every op in lib/ (lib/ops functions, Tensor.reshape/permute/contiguous/to, and through them
// lib/nn and lib/models) ends in one call on the native addon. `install()` wraps those entries:
// when grad mode is on and an input handle requires grad, the wrapper runs the op, then asks the
// op's rule (lib/autograd/rules-*.ts, one rule per native entry) to save what its backward needs
// and pushes a node. With no input requiring grad the wrapper only pays one WeakMap lookup per
// input, so inference code is unchanged and unaware of autograd.
//
// Saved tensors are private handles (views) on the inputs' storage, so a forward may dispose its
// intermediates (tidy, explicit dispose) without breaking the backward; `backward()` disposes
// them as it walks the tape, so memory returns to what was held before the forward plus the
// leaves' `.grad` tensors.
import { native, type NativeAddon, type NativeTensor } from "../native";
import { Tensor, keep } from "../tensor";

export type H = NativeTensor;
/** One gradient (or null: none / not needed) per differentiable input, in the rule's input order. */
export type Grads = (H | null | undefined)[];
export type BackwardFn = (g: H) => Grads;

/** What a rule sees while recording. */
export interface RecordCtx {
  /** The entry's arguments, as passed to the addon. */
  args: any[];
  /** The op's output handle. */
  out: H;
  /** Extra outputs of the rule's own forward (e.g. attention's logsumexp); owned by the node. */
  extras: H[];
  /** needs[i]: differentiable input i requires a gradient. */
  needs: boolean[];
  /** A private handle on t's storage, valid until the node is released. */
  save(t: H): H;
}

export interface Rule {
  /** The differentiable tensor arguments of the entry (null where absent), in gradient order. */
  inputs(args: any[]): (H | null | undefined)[];
  /** A forward to run instead of the plain entry while recording: returns [output, ...extras]. */
  forward?(raw: NativeAddon, args: any[]): H[];
  /** Saves what the backward needs and returns it; null when the output is not differentiable. */
  record(c: RecordCtx): BackwardFn | null;
}

interface Meta {
  requiresGrad: boolean;
  /** The node that produced this tensor; null for a leaf. */
  node: Node | null;
  /** Accumulated gradient of a leaf. */
  grad: Tensor | null;
}

class Node {
  backward: BackwardFn | null;
  released = false;
  constructor(
    readonly id: number,
    readonly op: string,
    readonly inputs: (Meta | null)[],
    readonly inputShapes: (number[] | null)[],
    readonly saved: H[],
    backward: BackwardFn,
  ) {
    this.backward = backward;
  }
}

const metas = new WeakMap<H, Meta>();
// gradLeaves: leaves ever switched to requiresGrad (minus those switched off). While it is 0 no
// op can record, so the wrappers below skip the per-input lookups: inference pays one check.
const state = { enabled: true, nextId: 0, live: 0, gradLeaves: 0 };
let raw: NativeAddon;

// Handles created by B.* while a node's backward runs; disposed unless returned as gradients.
let scope: H[] | null = null;

function collect(r: unknown): void {
  if (!scope || r == null) return;
  if (Array.isArray(r)) { for (const x of r) collect(x); return; }
  if (typeof r === "object" && typeof (r as H).dispose === "function") scope.push(r as H);
}

/**
 * The raw (never recorded) addon for backward rules: every handle it returns inside a rule is
 * disposed after the rule ran unless it is one of the returned gradients.
 */
export const B: NativeAddon = new Proxy({} as NativeAddon, {
  get(_t, key: string) {
    const fn = (raw as any)[key];
    if (typeof fn !== "function") return fn;
    const f32 = key.endsWith("Backward");
    return (...a: unknown[]) => {
      const r = f32 ? float32Call(fn, a) : fn(...a);
      collect(r);
      return r;
    };
  },
});

const isReduced = (x: unknown): x is H => isHandle(x) && (x.dtype === "bfloat16" || x.dtype === "float16");

/**
 * Calls a float32-only native entry (the backward kernels) under mixed precision: bfloat16 or
 * float16 tensor arguments are upcast, and every float32 tensor it returns is rounded to the
 * first such argument's dtype (the gradient's). Reduced-precision inputs with float32
 * accumulation: the numerics of a bf16 GEMM, only without its speed.
 */
export function float32Call(fn: (...a: any[]) => any, a: readonly unknown[]): any {
  const first = a.find(isReduced);
  if (!first) return fn(...a);
  const tmp: H[] = [];
  const up = (x: unknown): unknown => {
    if (!isReduced(x)) return x;
    const t = raw.to(x, x.device, "float32");
    tmp.push(t);
    return t;
  };
  const down = (r: unknown): unknown => {
    if (Array.isArray(r)) return r.map(down);
    if (!isHandle(r) || r.dtype !== "float32") return r;
    const t = raw.to(r, r.device, first.dtype);
    r.dispose();
    return t;
  };
  try {
    return down(fn(...a.map(up)));
  } finally {
    for (const t of tmp) t.dispose();
  }
}

/** The unwrapped addon (optimisers and other code that must never record). */
export function rawNative(): NativeAddon {
  if (!raw) throw new Error("autograd: not installed");
  return raw;
}

export const identityDims = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
/** A new handle on h's storage (same shape and strides). */
export const viewOf = (h: H): H => raw.permute(h, identityDims(h.shape.length));

// ---- grad mode

export function isGradEnabled(): boolean { return state.enabled; }
export function setGradEnabled(on: boolean): void { state.enabled = !!on; }

function withGradMode<R>(on: boolean, fn: () => R, what: string): R {
  const prev = state.enabled;
  state.enabled = on;
  let r: R;
  try {
    r = fn();
  } finally {
    state.enabled = prev;
  }
  if (r instanceof Promise) throw new TypeError(`${what}: fn must be synchronous (it returned a Promise)`);
  return r;
}
/** Runs fn without recording (inference, optimiser steps). Synchronous, like tidy(). */
export function noGrad<R>(fn: () => R): R { return withGradMode(false, fn, "noGrad"); }
/** Runs fn with recording on (inside a noGrad scope). */
export function enableGrad<R>(fn: () => R): R { return withGradMode(true, fn, "enableGrad"); }

/** Number of recorded nodes whose saved tensors are not yet freed (tests, leak checks). */
export function liveNodeCount(): number { return state.live; }

// ---- per-tensor state

const isFloat = (dtype: string) => dtype === "float32" || dtype === "float16" || dtype === "bfloat16";

export function requiresGrad(h: H): boolean { return metas.get(h)?.requiresGrad ?? false; }

export function setRequiresGrad(h: H, on: boolean): void {
  const m = metas.get(h);
  if (m?.node) {
    if (!on) throw new TypeError("requiresGrad: a tensor computed from tensors that require grad cannot be switched off; use detach()");
    return;
  }
  if (on && !isFloat(h.dtype)) throw new TypeError(`requiresGrad: only floating-point tensors can require gradients, got ${h.dtype}`);
  if ((m?.requiresGrad ?? false) !== on) state.gradLeaves += on ? 1 : -1;
  if (m) m.requiresGrad = on;
  else if (on) metas.set(h, { requiresGrad: true, node: null, grad: null });
}

export function gradOf(h: H): Tensor | null {
  const g = metas.get(h)?.grad ?? null;
  return g && !g.disposed ? g : null;
}

/** Replaces a leaf's gradient (null clears it; the old gradient tensor is disposed). */
export function setGrad(h: H, g: Tensor | null): void {
  const m = metas.get(h);
  if (m?.node) {
    if (g === null) return;
    throw new TypeError("grad: only leaf tensors hold gradients");
  }
  if (g !== null && !(g instanceof Tensor)) throw new TypeError("grad: expected a Tensor or null");
  if (g && (g.shape.length !== h.shape.length || g.shape.some((d, i) => d !== h.shape[i])))
    throw new RangeError(`grad: shape [${g.shape.join(",")}] does not match the tensor's [${h.shape.join(",")}]`);
  const old = m?.grad;
  if (old && old !== g) old.dispose();
  if (m) m.grad = g ? keep(g) : null;
  else if (g) metas.set(h, { requiresGrad: false, node: null, grad: keep(g) });
}

export function gradFnOf(h: H): string | null { return metas.get(h)?.node?.op ?? null; }

// ---- recording

const UNTRACKED = new Set([
  "devices", "memoryStats", "resetPeakMemory", "emptyCache", "synchronize", "queueDepth", "buildInfo",
  "fromBuffer", "full", "randn",
]);

function isHandle(x: unknown): x is H {
  return typeof x === "object" && x !== null && typeof (x as H).dispose === "function" && "dtype" in (x as object);
}

function recorded(name: string, rule: Rule, fn: (...a: any[]) => any) {
  return function (...args: any[]): any {
    if (!state.enabled || state.gradLeaves === 0) return fn(...args);
    const ins = rule.inputs(args);
    let any = false;
    const inMetas = ins.map((h) => {
      const m = h ? metas.get(h) : undefined;
      if (m?.requiresGrad) { any = true; return m; }
      return null;
    });
    if (!any) return fn(...args);
    const outs: H[] = rule.forward ? rule.forward(raw, args) : [fn(...args)];
    const [out, ...extras] = outs;
    const saved: H[] = [...extras];
    let bw: BackwardFn | null;
    try {
      bw = rule.record({ args, out, extras, needs: inMetas.map((m) => m !== null), save: (t) => { const v = viewOf(t); saved.push(v); return v; } });
    } catch (e) {
      for (const h of saved) h.dispose();
      out.dispose();
      throw e;
    }
    if (!bw) { for (const h of saved) h.dispose(); return out; }
    const node = new Node(state.nextId++, name, inMetas, ins.map((h, i) => (h && inMetas[i] ? [...h.shape] : null)), saved, bw);
    state.live++;
    metas.set(out, { requiresGrad: true, node, grad: null });
    return out;
  };
}

// Entries without a rule: recording through them would silently drop gradients, so they refuse.
function guarded(name: string, fn: (...a: any[]) => any) {
  return function (...args: any[]): any {
    if (state.enabled && state.gradLeaves !== 0) {
      for (const a of args) {
        const hs = Array.isArray(a) ? a : [a];
        for (const h of hs)
          if (isHandle(h) && metas.get(h)?.requiresGrad)
            throw new TypeError(`${name}: no backward rule for this op (lib/autograd); call it inside noGrad() or detach() the input`);
      }
    }
    return fn(...args);
  };
}

const RAW = Symbol.for("diffusekit.autograd.raw");

/**
 * Wraps the addon's entries (once per addon object; a second install re-wraps from the saved
 * originals). `rules` maps entry names to rules; `untracked` lists entries that never record
 * (backward kernels, optimiser updates).
 */
export function install(rules: Record<string, Rule>, untracked: readonly string[]): void {
  const addon = native() as any;
  if (!addon[RAW]) Object.defineProperty(addon, RAW, { value: { ...addon }, enumerable: false });
  raw = addon[RAW] as NativeAddon;
  const skip = new Set([...UNTRACKED, ...untracked]);
  for (const name of Object.keys(raw)) {
    const fn = (raw as any)[name];
    if (typeof fn !== "function" || name === "NativeTensor") continue;
    if (rules[name]) addon[name] = recorded(name, rules[name], fn);
    else addon[name] = skip.has(name) ? fn : guarded(name, fn);
  }
}

// ---- backward

function release(node: Node): void {
  if (node.released) return;
  node.released = true;
  node.backward = null;
  for (const h of node.saved) h.dispose();
  node.saved.length = 0;
  state.live--;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

// Runs one rule; every returned gradient is a handle owned by the caller and by nobody else.
function runRule(node: Node, g: H): Grads {
  const created: H[] = [];
  scope = created;
  let grads: Grads;
  try {
    grads = node.backward!(g);
  } catch (e) {
    scope = null;
    for (const h of created) h.dispose();
    throw e;
  } finally {
    scope = null;
  }
  const mine = new Set(created);
  const handed = new Set<H>();
  const out = grads.map((h) => {
    if (!h) return null;
    if (!mine.has(h) || handed.has(h)) return viewOf(h);  // g itself, a saved handle, or a repeat
    handed.add(h);
    return h;
  });
  for (const h of created) if (!handed.has(h)) h.dispose();
  return out;
}

function accumulateLeaf(m: Meta, g: H): void {
  const cur = m.grad && !m.grad.disposed ? m.grad : null;
  if (cur) {
    raw.addInPlace(cur.handle, g);
    g.dispose();
    return;
  }
  // a private contiguous copy: gradients of different leaves may share storage (x + y)
  const t = new Tensor(raw.clone(g));
  keep(t);
  g.dispose();
  m.grad = t;
}

export interface BackwardOptions {
  /** Gradient of the output (default: 1 for a one-element output). */
  grad?: Tensor;
  /** Keep the saved tensors so backward can run through this graph again. */
  retainGraph?: boolean;
}

/**
 * Accumulates d(output)/d(leaf) into `.grad` of every leaf that requires grad and was used to
 * compute `output`, then frees the saved tensors of the graph (unless retainGraph).
 */
export function backward(output: Tensor, opts: BackwardOptions = {}): void {
  if (!(output instanceof Tensor)) throw new TypeError("backward: output must be a Tensor");
  if (output.disposed) throw new TypeError("backward: output is disposed");
  const meta = metas.get(output.handle);
  if (!meta?.requiresGrad)
    throw new TypeError("backward: the tensor does not require grad (no input of its computation has requiresGrad = true)");
  let seed: H;
  if (opts.grad) {
    if (!sameShape(opts.grad.shape, output.shape))
      throw new RangeError(`backward: grad has shape [${opts.grad.shape.join(",")}], output has [${output.shape.join(",")}]`);
    seed = raw.to(opts.grad.handle, output.device, output.dtype);
    seed = seed === opts.grad.handle ? viewOf(seed) : seed;
  } else {
    if (output.numel !== 1)
      throw new RangeError(`backward: output must hold one value to be differentiated without opts.grad, got shape [${output.shape.join(",")}]`);
    seed = raw.full([...output.shape], 1, output.dtype, output.device);
  }
  if (!meta.node) { accumulateLeaf(meta, seed); return; }

  // every node reachable from the output, newest first (ids increase in recording order, so
  // this is a topological order)
  const order: Node[] = [];
  const seen = new Set<Node>();
  const stack: Node[] = [meta.node];
  while (stack.length) {
    const n = stack.pop()!;
    if (seen.has(n)) continue;
    seen.add(n);
    if (n.released) {
      seed.dispose();
      throw new Error(`backward: the graph was already freed by an earlier backward (op ${n.op}); pass retainGraph: true to run it twice`);
    }
    order.push(n);
    for (const m of n.inputs) if (m?.node && !seen.has(m.node)) stack.push(m.node);
  }
  order.sort((a, b) => b.id - a.id);

  const pending = new Map<Node, H>([[meta.node, seed]]);
  const prevMode = state.enabled;
  state.enabled = false;
  try {
    for (const node of order) {
      const g = pending.get(node);
      pending.delete(node);
      if (g) {
        let grads: Grads;
        try {
          grads = runRule(node, g);
        } finally {
          g.dispose();
        }
        node.inputs.forEach((m, i) => {
          const gi = grads[i];
          if (!gi) return;
          if (!m) { gi.dispose(); return; }
          const want = node.inputShapes[i]!;
          if (!sameShape(gi.shape, want)) {
            gi.dispose();
            throw new Error(`autograd: the ${node.op} rule returned a gradient of shape [${gi.shape.join(",")}] for input ${i} of shape [${want.join(",")}]`);
          }
          if (m.node) {
            const prev = pending.get(m.node);
            if (prev) {
              pending.set(m.node, raw.binary("add", prev, gi));
              prev.dispose();
              gi.dispose();
            } else {
              pending.set(m.node, gi);
            }
          } else if (m.requiresGrad) {
            accumulateLeaf(m, gi);
          } else {
            gi.dispose();
          }
        });
      }
      if (!opts.retainGraph) release(node);
    }
  } finally {
    state.enabled = prevMode;
    for (const h of pending.values()) h.dispose();
    if (!opts.retainGraph) for (const n of order) release(n);
  }
}

/** Frees the saved tensors of every node that `output` depends on, without computing gradients. */
export function releaseGraph(output: Tensor): void {
  const root = metas.get(output.handle)?.node;
  if (!root) return;
  const stack = [root];
  const seen = new Set<Node>();
  while (stack.length) {
    const n = stack.pop()!;
    if (seen.has(n)) continue;
    seen.add(n);
    for (const m of n.inputs) if (m?.node) stack.push(m.node);
    release(n);
  }
}
