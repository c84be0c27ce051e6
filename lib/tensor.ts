// Tensor: a typed handle over native memory on a device. Ops enqueue work and return at once;
// reading values back (`await t.toFloat32Array()`) is the synchronisation point.
import { native, type DTypeName, type NativeTensor } from "./native";

export type DType = DTypeName;
/** "cpu", "cuda" (= "cuda:0") or "cuda:N". */
export type DeviceName = string;

export interface TensorOptions {
  dtype?: DType;
  device?: DeviceName;
}

export type TensorData = Float32Array | Int32Array | BigInt64Array | Uint8Array;

// Safety net: a tensor that was never disposed frees its native memory when collected.
const finalizer = new FinalizationRegistry<NativeTensor>((h) => h.dispose());

// ---- tidy scopes: tensors created inside are disposed on exit unless returned or kept
const scopes: Set<Tensor>[] = [];

function track(t: Tensor): void {
  if (scopes.length) scopes[scopes.length - 1].add(t);
}

function collectTensors(value: unknown, into: Set<Tensor>, depth = 0): void {
  if (depth > 8 || value == null) return;
  if (value instanceof Tensor) { into.add(value); return; }
  if (Array.isArray(value)) { for (const v of value) collectTensors(v, into, depth + 1); return; }
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype)
    for (const v of Object.values(value as Record<string, unknown>)) collectTensors(v, into, depth + 1);
}

/**
 * Runs `fn` and disposes every tensor created during it, except tensors in its result (a tensor,
 * or arrays / plain objects holding tensors) and tensors passed to `keep()`. Synchronous on
 * purpose: ops only enqueue work, so a whole forward pass runs inside one tidy.
 */
export function tidy<R>(fn: () => R): R {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: R;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) {
    for (const t of scope) t.dispose();
    throw new TypeError("tidy: fn must be synchronous (it returned a Promise); await outside the tidy");
  }
  const survivors = new Set<Tensor>();
  collectTensors(result, survivors);
  for (const t of scope) {
    if (survivors.has(t)) { track(t); continue; }  // moves to the enclosing scope
    t.dispose();
  }
  return result;
}

/** Exempts tensors from the current tidy scope (they must then be disposed by hand). */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function dtypeOfData(data: TensorData): DType {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Int32Array) return "int32";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Uint8Array) return "uint8";
  throw new TypeError("Tensor.fromArray: data must be a Float32Array, Int32Array, BigInt64Array or Uint8Array");
}

export class Tensor {
  /** @internal */
  readonly handle: NativeTensor;
  private shapeCache?: readonly number[];

  /** @internal Wraps a native handle; use the static constructors or ops instead. */
  constructor(handle: NativeTensor) {
    this.handle = handle;
    finalizer.register(this, handle, this);
    track(this);
  }

  // ---- construction
  /** Copies `data` into a new tensor. float32 data may be stored as float16/bfloat16 via opts.dtype. */
  static fromArray(data: TensorData, shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const srcType = dtypeOfData(data);
    if (elementCount(shape) !== data.length)
      throw new RangeError(`Tensor.fromArray: shape [${shape.join(",")}] needs ${elementCount(shape)} values, got ${data.length}`);
    const device = opts.device ?? "cpu";
    const want = opts.dtype ?? srcType;
    const t = new Tensor(native().fromBuffer(data, [...shape], srcType, want === srcType ? device : "cpu"));
    if (want === srcType) return t;
    try {
      return new Tensor(native().to(t.handle, device, want));
    } finally {
      t.dispose();
    }
  }
  /**
   * Raw little-endian element bytes of `dtype` (e.g. a safetensors F16 tensor) as a tensor on
   * `device`, copied without conversion (float16/bfloat16 too, which fromArray cannot take).
   */
  static fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType, device: DeviceName = "cpu"): Tensor {
    if (!(bytes instanceof Uint8Array)) throw new TypeError("Tensor.fromBytes: bytes must be a Uint8Array (or Buffer)");
    return new Tensor(native().fromBuffer(bytes, [...shape], dtype, device));
  }
  static zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    return Tensor.full(shape, 0, opts);
  }
  static ones(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    return Tensor.full(shape, 1, opts);
  }
  static full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
    return new Tensor(native().full([...shape], value, opts.dtype ?? "float32", opts.device ?? "cpu"));
  }
  /** Standard normal values from a counter-based Philox stream: same seed, same values on any device. */
  static randn(shape: readonly number[], opts: TensorOptions & { seed?: number; offset?: number } = {}): Tensor {
    const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
    const device = opts.device ?? "cpu";
    const dtype = opts.dtype ?? "float32";
    if (device === "cpu" && dtype !== "float32") {
      const f = Tensor.randn(shape, { seed, offset: opts.offset, device });
      try { return f.to(device, dtype); } finally { f.dispose(); }
    }
    return new Tensor(native().randn([...shape], seed, opts.offset ?? 0, dtype, device));
  }

  // ---- metadata
  get shape(): readonly number[] {
    if (!this.shapeCache) this.shapeCache = Object.freeze(this.handle.shape);
    return this.shapeCache;
  }
  get dtype(): DType { return this.handle.dtype; }
  get device(): DeviceName { return this.handle.device; }
  get ndim(): number { return this.shape.length; }
  get numel(): number { return elementCount(this.shape); }
  get nbytes(): number { return this.handle.nbytes; }
  get disposed(): boolean { return this.handle.disposed; }
  get isContiguous(): boolean { return this.handle.contiguous; }
  size(dim: number): number {
    const d = dim < 0 ? dim + this.ndim : dim;
    if (d < 0 || d >= this.ndim) throw new RangeError(`size: dim ${dim} out of range for ${this.ndim} dims`);
    return this.shape[d];
  }

  // ---- memory
  /** Frees the native memory now (queued ops that still use it keep it until they finish). */
  dispose(): void {
    if (this.handle.disposed) return;
    finalizer.unregister(this);
    this.handle.dispose();
  }
  [Symbol.dispose](): void { this.dispose(); }

  // ---- read-back
  /** Values as float32 (any dtype is converted); resolves when the device has computed them. */
  async toFloat32Array(): Promise<Float32Array> {
    if (this.dtype === "float32" && this.device === "cpu") return new Float32Array(await this.handle.read());
    const h = native().to(this.handle, "cpu", "float32");
    try {
      return new Float32Array(await h.read());
    } finally {
      h.dispose();
    }
  }
  /** Values in their own type (float16/bfloat16 come back as float32). */
  async toArray(): Promise<TensorData> {
    switch (this.dtype) {
      case "int32": return new Int32Array(await this.onCpu().read());
      case "int64": return new BigInt64Array(await this.onCpu().read());
      case "uint8": return new Uint8Array(await this.onCpu().read());
      default: return this.toFloat32Array();
    }
  }
  private onCpu(): NativeTensor {
    return this.device === "cpu" ? this.handle : native().to(this.handle, "cpu", this.dtype);
  }

  // ---- conversions and views (see lib/ops/shape.ts for the rest)
  to(device: DeviceName, dtype: DType = this.dtype): Tensor {
    return new Tensor(native().to(this.handle, device, dtype));
  }
  reshape(shape: readonly number[]): Tensor {
    return new Tensor(native().reshape(this.handle, [...shape]));
  }
  permute(dims: readonly number[]): Tensor {
    return new Tensor(native().permute(this.handle, [...dims]));
  }
  transpose(dim0: number, dim1: number): Tensor {
    const dims = this.shape.map((_, i) => i);
    const a = dim0 < 0 ? dim0 + this.ndim : dim0, b = dim1 < 0 ? dim1 + this.ndim : dim1;
    if (a < 0 || a >= this.ndim || b < 0 || b >= this.ndim)
      throw new RangeError(`transpose: dims ${dim0}, ${dim1} out of range for ${this.ndim} dims`);
    [dims[a], dims[b]] = [dims[b], dims[a]];
    return this.permute(dims);
  }
  contiguous(): Tensor {
    return new Tensor(native().contiguous(this.handle));
  }
  toString(): string {
    return this.disposed ? "Tensor(disposed)" : `Tensor(shape=[${this.shape.join(",")}], dtype=${this.dtype}, device=${this.device})`;
  }
}

/**
 * The native handle of an op argument, with errors that name the op and the argument
 * (TypeError for a non-Tensor or a disposed one).
 */
export function arg(x: unknown, op: string, name: string): NativeTensor {
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: ${name} must be a Tensor, got ${x === null ? "null" : typeof x}`);
  if (x.handle.disposed) throw new TypeError(`${op}: ${name} is disposed`);
  return x.handle;
}

/** Like arg() for an optional tensor: null/undefined pass through as null. */
export function optArg(x: unknown, op: string, name: string): NativeTensor | null {
  return x === null || x === undefined ? null : arg(x, op, name);
}

/** Wraps a native result (for lib/ops). */
export function wrap(h: NativeTensor): Tensor {
  return new Tensor(h);
}
