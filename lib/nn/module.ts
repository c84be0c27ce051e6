// Module: a tree of named parameters with strict state-dict loading, device/dtype moves and
// disposal. Parameters are declared with their diffusers/PyTorch shape; a module may store them
// in another layout (Conv2d keeps OHWI) through `fromCheckpoint`.
import { Tensor, type DType, type DeviceName } from "../tensor";
import "../autograd";  // Tensor.requiresGrad / .grad (autograd records at the native boundary)

/** Where load() gets tensors from: a safetensors file, several shards, or an in-memory map. */
export interface StateDictSource {
  keys(): string[];
  shape(key: string): readonly number[];
  /** Loads one tensor (float32 on the CPU unless dtype/device say otherwise). */
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor;
}

/** A source over tensors already in memory (tests, random init, converted checkpoints). */
export class TensorMapSource implements StateDictSource {
  constructor(private readonly map: Map<string, Tensor>) {}
  keys(): string[] { return [...this.map.keys()]; }
  shape(key: string): readonly number[] { return this.map.get(key)!.shape; }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor { return this.map.get(key)!.to(opts.device, opts.dtype); }
}

export interface ParamSpec {
  /** Shape in the checkpoint (PyTorch layout). */
  shape: number[];
  /** Converts the checkpoint tensor to the stored layout (must not dispose its input). */
  fromCheckpoint?: (t: Tensor) => Tensor;
  /** Converts back for saving. */
  toCheckpoint?: (t: Tensor) => Tensor;
}

export class StateDictError extends Error {
  constructor(message: string, readonly missing: string[] = [], readonly unexpected: string[] = [], readonly mismatched: string[] = []) {
    super(message);
    this.name = "StateDictError";
  }
}

export abstract class Module {
  private readonly specs = new Map<string, ParamSpec>();
  private readonly values = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  protected param(name: string, spec: ParamSpec): void {
    this.specs.set(name, spec);
  }
  protected child<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }
  /** A declared parameter's tensor (throws if it was never loaded). */
  protected p(name: string): Tensor {
    const t = this.values.get(name);
    if (!t) throw new Error(`${this.constructor.name}: parameter "${name}" is not loaded`);
    return t;
  }
  /** Redeclares a loaded parameter with a new shape and value (a grown embedding table); returns the old tensor. */
  protected resizeParameter(name: string, spec: ParamSpec, t: Tensor): Tensor {
    const old = this.p(name);
    if (spec.shape.length !== t.shape.length || spec.shape.some((d, i) => d !== t.shape[i]))
      throw new RangeError(`${this.constructor.name}.resizeParameter: ${name} declared [${spec.shape.join(",")}] but given [${t.shape.join(",")}]`);
    this.specs.set(name, spec);
    this.values.set(name, t);
    return old;
  }
  protected hasParam(name: string): boolean {
    return this.specs.has(name);
  }

  /** This module and every module below it. */
  modules(): Module[] {
    return [this, ...[...this.children.values()].flatMap((c) => c.modules())];
  }
  /** Every declared parameter as [dotted name, spec, owner]. */
  namedParameterSpecs(prefix = ""): [string, ParamSpec, Module, string][] {
    const out: [string, ParamSpec, Module, string][] = [];
    for (const [n, s] of this.specs) out.push([prefix + n, s, this, n]);
    for (const [n, c] of this.children) out.push(...c.namedParameterSpecs(`${prefix}${n}.`));
    return out;
  }
  /** Loaded parameters (stored layout) as [dotted name, tensor]. */
  namedParameters(prefix = ""): [string, Tensor][] {
    return this.namedParameterSpecs(prefix)
      .filter(([, , m, local]) => m.values.has(local))
      .map(([name, , m, local]) => [name, m.values.get(local)!]);
  }
  parameterCount(): number {
    return this.namedParameterSpecs().reduce((n, [, s]) => n + s.shape.reduce((a, b) => a * b, 1), 0);
  }

  /**
   * Loads every parameter from `source`. Strict: missing keys, unexpected keys (under `prefix`)
   * and shape mismatches are errors that list the keys. `mapKey` renames source keys first.
   */
  loadStateDict(source: StateDictSource, opts: { dtype?: DType; device?: DeviceName; prefix?: string; strict?: boolean } = {}): void {
    const dtype = opts.dtype ?? "float32", device = opts.device ?? "cpu", prefix = opts.prefix ?? "";
    const specs = this.namedParameterSpecs(prefix);
    const have = new Set(source.keys().filter((k) => k.startsWith(prefix)));
    const missing: string[] = [], mismatched: string[] = [];
    for (const [name, spec] of specs) {
      if (!have.has(name)) { missing.push(name); continue; }
      const shape = source.shape(name);
      if (shape.length !== spec.shape.length || shape.some((d, i) => d !== spec.shape[i]))
        mismatched.push(`${name}: checkpoint [${shape.join(",")}] vs model [${spec.shape.join(",")}]`);
    }
    const known = new Set(specs.map(([n]) => n));
    const unexpected = [...have].filter((k) => !known.has(k));
    const strict = opts.strict ?? true;
    if (missing.length || mismatched.length || (strict && unexpected.length)) {
      const parts: string[] = [];
      const list = (xs: string[]) => xs.slice(0, 20).join(", ") + (xs.length > 20 ? `, ... (${xs.length} in all)` : "");
      if (missing.length) parts.push(`missing keys: ${list(missing)}`);
      if (strict && unexpected.length) parts.push(`unexpected keys: ${list(unexpected)}`);
      if (mismatched.length) parts.push(`shape mismatches: ${list(mismatched)}`);
      throw new StateDictError(`${this.constructor.name}.loadStateDict: ${parts.join("; ")}`, missing, unexpected, mismatched);
    }
    for (const [name, spec, owner, local] of specs) {
      const raw = source.load(name, { dtype, device });
      let t = raw;
      if (spec.fromCheckpoint) { t = spec.fromCheckpoint(raw); raw.dispose(); }
      owner.values.get(local)?.dispose();
      owner.values.set(local, t);
    }
  }

  /** A loaded parameter by dotted name: its tensor (stored layout) and its declaration; null when none is loaded. */
  parameter(name: string): { tensor: Tensor; spec: ParamSpec } | null {
    for (const [n, spec, owner, local] of this.namedParameterSpecs()) {
      if (n !== name) continue;
      const t = owner.values.get(local);
      return t ? { tensor: t, spec } : null;
    }
    return null;
  }

  /**
   * Puts `t` in place of a loaded parameter (same shape in the stored layout) and hands back the
   * tensor it held, which the caller then owns (to restore or dispose). Weight patches (LoRA) use it.
   */
  replaceParameter(name: string, t: Tensor): Tensor {
    for (const [n, , owner, local] of this.namedParameterSpecs()) {
      if (n !== name) continue;
      const old = owner.values.get(local);
      if (!old) break;
      if (old.shape.length !== t.shape.length || old.shape.some((d, i) => d !== t.shape[i]))
        throw new RangeError(`${this.constructor.name}.replaceParameter: ${name} is [${old.shape.join(",")}], got [${t.shape.join(",")}]`);
      owner.values.set(local, t);
      return old;
    }
    throw new RangeError(`${this.constructor.name}.replaceParameter: no loaded parameter named ${JSON.stringify(name)}`);
  }

  /** Parameters in checkpoint layout (for saving), as new tensors the caller disposes. */
  stateDict(prefix = ""): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, spec, owner, local] of this.namedParameterSpecs(prefix)) {
      const t = owner.values.get(local);
      if (!t) continue;
      out.set(name, spec.toCheckpoint ? spec.toCheckpoint(t) : t.contiguous());
    }
    return out;
  }

  /** Moves/casts every parameter in place. */
  to(device: DeviceName, dtype?: DType): this {
    for (const [, , owner, local] of this.namedParameterSpecs()) {
      const t = owner.values.get(local);
      if (!t) continue;
      const moved = t.to(device, dtype ?? t.dtype);
      if (moved !== t) t.dispose();
      owner.values.set(local, moved);
    }
    return this;
  }

  /**
   * Marks every loaded parameter as requiring gradients (or not), for training with
   * lib/autograd. Tensors made later by loadStateDict() or to() start without it.
   */
  setRequiresGrad(on = true): this {
    for (const [, t] of this.namedParameters()) t.requiresGrad = on;
    return this;
  }

  /**
   * Runs fn with every floating-point parameter replaced by a cast to `dtype` (recorded when the
   * parameter requires gradients, so they flow back to it in its own dtype): mixed-precision
   * training with float32 master weights. The casts are freed when fn returns; fn must not keep them.
   */
  withParametersAs<R>(dtype: DType, fn: () => R): R {
    if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16")
      throw new TypeError(`withParametersAs: dtype must be "float32", "float16" or "bfloat16", got ${JSON.stringify(dtype)}`);
    if (typeof fn !== "function") throw new TypeError("withParametersAs: fn must be a function");
    const swapped: [Module, string, Tensor][] = [];
    try {
      for (const [, , owner, local] of this.namedParameterSpecs()) {
        const t = owner.values.get(local);
        if (!t || t.dtype === dtype || !/^(float|bfloat)/.test(t.dtype)) continue;
        swapped.push([owner, local, t]);
        owner.values.set(local, t.to(t.device, dtype));
      }
      const r = fn();
      if (r instanceof Promise) throw new TypeError("withParametersAs: fn must be synchronous");
      return r;
    } finally {
      for (const [owner, local, t] of swapped) {
        owner.values.get(local)!.dispose();
        owner.values.set(local, t);
      }
    }
  }

  /** Frees every parameter. */
  dispose(): void {
    for (const [, , owner, local] of this.namedParameterSpecs()) {
      owner.values.get(local)?.dispose();
      owner.values.delete(local);
    }
  }
}
