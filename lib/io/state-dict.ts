/**
 * State-dict sources: what `Module.loadStateDict` reads parameters from.
 *
 * - `SafetensorsStateDict`: one file, several shards, or a sharded `*.safetensors.index.json`;
 *   F32/F16/BF16/F64 on disk become the requested dtype on the requested device, one tensor at a
 *   time (nothing is read before `load()`), with optional key renaming for single-file checkpoints.
 * - `LazyStateDict`: named entries whose values are produced on demand (key conversion, tests).
 * - `filterStateDict` / `prefixStateDict`: views over another source.
 *
 * Every source here also hands out float32 values on the host (`readFloat32`), which is what key
 * converters (lib/models/single-file.ts) and savers need; they never touch a device.
 */
import * as fs from "fs";
import * as path from "path";
import { Tensor, type DType, type DeviceName } from "../tensor";
import type { StateDictSource } from "../nn/module";
import { SafetensorsFile, type SafetensorsDType } from "./safetensors";

export type { StateDictSource } from "../nn/module";

/** A source that can also return a tensor's values as float32 on the host, in checkpoint layout. */
export interface HostStateDictSource extends StateDictSource {
  readFloat32(key: string): Float32Array;
}

export interface HostTensor {
  data: Float32Array;
  shape: readonly number[];
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Builds a tensor from host float32 values: copies on the CPU, then moves/casts once. */
/** safetensors float dtypes the native side stores as they are. */
const RAW_FLOAT: Partial<Record<SafetensorsDType, DType>> = { F32: "float32", F16: "float16", BF16: "bfloat16" };
const FLOAT_TARGETS = new Set<DType>(["float32", "float16", "bfloat16"]);

export function tensorFromHost(data: Float32Array, shape: readonly number[], opts: { dtype: DType; device: DeviceName }): Tensor {
  return Tensor.fromArray(data, shape, { dtype: opts.dtype, device: opts.device });
}

function unknownKey(what: string, key: string, keys: string[]): Error {
  const some = keys.slice(0, 5).map((k) => JSON.stringify(k)).join(", ");
  return new Error(`${what}: no tensor named ${JSON.stringify(key)} (${keys.length} tensors${keys.length ? `, e.g. ${some}` : ""})`);
}

// ---- safetensors files

export interface SafetensorsStateDictOptions {
  /** Keeps only keys that start with this prefix, and removes it (applied before `mapKey`). */
  stripPrefix?: string;
  /** Renames each checkpoint key (after `stripPrefix`); returning null drops the key. */
  mapKey?: (key: string) => string | null;
}

interface Located {
  file: SafetensorsFile;
  /** The key inside the file. */
  fileKey: string;
}

/** The float dtypes a parameter may be stored in; integer tensors (buffers) load too, converted. */
const FLOAT_DTYPES: ReadonlySet<SafetensorsDType> = new Set(["F32", "F16", "BF16", "F64"]);

export class SafetensorsStateDict implements HostStateDictSource {
  private readonly entries = new Map<string, Located>();

  private constructor(readonly files: readonly SafetensorsFile[], opts: SafetensorsStateDictOptions, readonly indexFile: string | null) {
    const seenInFile = new Map<string, string>();
    for (const f of files) {
      for (const raw of f.keys()) {
        const prev = seenInFile.get(raw);
        if (prev !== undefined) {
          this.close();
          throw new Error(`state dict: tensor ${JSON.stringify(raw)} appears in both ${prev} and ${f.path}`);
        }
        seenInFile.set(raw, f.path);
        let key: string | null = raw;
        if (opts.stripPrefix !== undefined) {
          if (!raw.startsWith(opts.stripPrefix)) continue;
          key = raw.slice(opts.stripPrefix.length);
        }
        if (opts.mapKey) key = opts.mapKey(key);
        if (key === null) continue;
        const clash = this.entries.get(key);
        if (clash) {
          this.close();
          throw new Error(`state dict: checkpoint keys ${JSON.stringify(clash.fileKey)} and ${JSON.stringify(raw)} both map to ${JSON.stringify(key)}`);
        }
        this.entries.set(key, { file: f, fileKey: raw });
      }
    }
  }

  /**
   * Opens one safetensors file, a list of shards, or a sharded checkpoint's index JSON
   * (`{"weight_map": {key: shard file}}`; shards are resolved next to it). Headers are validated
   * now; tensor data is read on `load()` / `readFloat32()`.
   */
  static open(files: string | readonly string[], opts: SafetensorsStateDictOptions = {}): SafetensorsStateDict {
    const list = typeof files === "string" ? [files] : [...files];
    if (list.length === 0) throw new Error("state dict: no files given");
    if (list.length === 1 && list[0].endsWith(".json")) return SafetensorsStateDict.openIndex(list[0], opts);
    const opened: SafetensorsFile[] = [];
    try {
      for (const f of list) opened.push(SafetensorsFile.open(f));
    } catch (e) {
      for (const f of opened) f.close();
      throw e;
    }
    return new SafetensorsStateDict(opened, opts, null);
  }

  /** Opens the shards named by a `*.safetensors.index.json` file. */
  static openIndex(indexFile: string, opts: SafetensorsStateDictOptions = {}): SafetensorsStateDict {
    const shards = readShardIndex(indexFile);
    const opened: SafetensorsFile[] = [];
    try {
      for (const s of shards.files) opened.push(SafetensorsFile.open(s));
      // Every key the index promises must be in the shard it names.
      const byPath = new Map(opened.map((f) => [f.path, f]));
      for (const [key, file] of shards.weightMap) {
        if (!byPath.get(file)!.has(key))
          throw new Error(`state dict ${indexFile}: weight_map puts ${JSON.stringify(key)} in ${path.basename(file)}, which does not hold it`);
      }
    } catch (e) {
      for (const f of opened) f.close();
      throw e;
    }
    return new SafetensorsStateDict(opened, opts, indexFile);
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  private locate(key: string): Located {
    const e = this.entries.get(key);
    if (!e) throw unknownKey(`state dict ${this.describe()}`, key, this.keys());
    return e;
  }

  shape(key: string): readonly number[] {
    const e = this.locate(key);
    return e.file.info(e.fileKey).shape;
  }

  /** The dtype stored on disk ("F16", "BF16", "F32", ...). */
  diskDType(key: string): SafetensorsDType {
    const e = this.locate(key);
    return e.file.info(e.fileKey).dtype;
  }

  /** The file holding `key` (for error messages and tools). */
  fileOf(key: string): string {
    return this.locate(key).file.path;
  }

  readFloat32(key: string): Float32Array {
    const e = this.locate(key);
    return e.file.readFloat32(e.fileKey);
  }

  /** The tensor's bytes as stored (its diskDType, little-endian). */
  readRaw(key: string): Buffer {
    const e = this.locate(key);
    return e.file.read(e.fileKey);
  }

  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor {
    const e = this.locate(key);
    const info = e.file.info(e.fileKey);
    if (!FLOAT_DTYPES.has(info.dtype) && (opts.dtype === "float32" || opts.dtype === "float16" || opts.dtype === "bfloat16")) {
      throw new TypeError(`state dict ${e.file.path}: tensor ${JSON.stringify(e.fileKey)} is ${info.dtype}, not a float parameter`);
    }
    const raw = RAW_FLOAT[info.dtype];
    if (raw && FLOAT_TARGETS.has(opts.dtype)) {
      // the file's own bytes go to the device as they are, and any cast runs natively there
      // (float16 -> float32 is exact; other casts round once, as from the float32 path)
      const t = Tensor.fromBytes(e.file.read(e.fileKey), info.shape, raw, opts.device);
      if (raw === opts.dtype) return t;
      try {
        return t.to(opts.device, opts.dtype);
      } finally {
        t.dispose();
      }
    }
    return tensorFromHost(e.file.readFloat32(e.fileKey), info.shape, opts);
  }

  private describe(): string {
    if (this.indexFile) return this.indexFile;
    return this.files.length === 1 ? this.files[0].path : `${this.files[0].path} (+${this.files.length - 1} shards)`;
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The shard files and key -> file map of a sharded checkpoint index, validated. */
export function readShardIndex(indexFile: string): { files: string[]; weightMap: Map<string, string>; metadata: Record<string, unknown> } {
  let text: string;
  try {
    text = fs.readFileSync(indexFile, "utf8");
  } catch (e) {
    throw new Error(`state dict: cannot read shard index ${indexFile}: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new Error(`state dict ${indexFile}: not valid JSON: ${(e as Error).message}`);
  }
  const wm = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (wm === null || typeof wm !== "object" || Array.isArray(wm))
    throw new Error(`state dict ${indexFile}: expected an object with a "weight_map" of tensor name -> shard file`);
  const dir = path.dirname(path.resolve(indexFile));
  const weightMap = new Map<string, string>();
  const files: string[] = [];
  for (const [key, shard] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof shard !== "string" || shard.length === 0)
      throw new Error(`state dict ${indexFile}: weight_map[${JSON.stringify(key)}] must be a file name, got ${JSON.stringify(shard)}`);
    // Shards live beside the index; a name that climbs out of the folder is refused.
    const resolved = path.resolve(dir, shard);
    if (path.dirname(resolved) !== dir)
      throw new Error(`state dict ${indexFile}: shard ${JSON.stringify(shard)} is not a file in the index's folder`);
    if (!shard.endsWith(".safetensors"))
      throw new Error(`state dict ${indexFile}: shard ${JSON.stringify(shard)} is not a .safetensors file`);
    if (!files.includes(resolved)) {
      if (!fs.existsSync(resolved)) throw new Error(`state dict ${indexFile}: shard ${shard} is missing`);
      files.push(resolved);
    }
    weightMap.set(key, resolved);
  }
  if (files.length === 0) throw new Error(`state dict ${indexFile}: weight_map is empty`);
  const metadata = ((parsed as { metadata?: unknown }).metadata ?? {}) as Record<string, unknown>;
  return { files, weightMap, metadata };
}

// ---- in-memory and computed sources

export interface LazyEntry {
  shape: readonly number[];
  /** Produces the values (float32, checkpoint layout, numel(shape) long). */
  read: () => Float32Array;
}

/** A source over entries computed on demand: converted checkpoints, arrays in memory. */
export class LazyStateDict implements HostStateDictSource {
  constructor(private readonly entries: Map<string, LazyEntry>, private readonly name = "state dict") {}

  /** A source over float32 arrays already in memory. */
  static fromArrays(arrays: Map<string, HostTensor> | Record<string, HostTensor>): LazyStateDict {
    const m = arrays instanceof Map ? arrays : new Map(Object.entries(arrays));
    const entries = new Map<string, LazyEntry>();
    for (const [k, t] of m) {
      if (t.data.length !== numel(t.shape))
        throw new RangeError(`LazyStateDict: ${JSON.stringify(k)} has ${t.data.length} values for shape [${t.shape.join(",")}]`);
      entries.set(k, { shape: [...t.shape], read: () => t.data });
    }
    return new LazyStateDict(entries, "in-memory state dict");
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }
  has(key: string): boolean {
    return this.entries.has(key);
  }
  private entry(key: string): LazyEntry {
    const e = this.entries.get(key);
    if (!e) throw unknownKey(this.name, key, this.keys());
    return e;
  }
  shape(key: string): readonly number[] {
    return this.entry(key).shape;
  }
  readFloat32(key: string): Float32Array {
    const e = this.entry(key);
    const data = e.read();
    if (data.length !== numel(e.shape))
      throw new RangeError(`${this.name}: ${JSON.stringify(key)} produced ${data.length} values for shape [${e.shape.join(",")}]`);
    return data;
  }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor {
    return tensorFromHost(this.readFloat32(key), this.entry(key).shape, opts);
  }
}

/** Reads every tensor of a host source into memory (small models, tests). */
export function readAllFloat32(source: HostStateDictSource): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const k of source.keys()) out.set(k, { data: source.readFloat32(k), shape: [...source.shape(k)] });
  return out;
}

// ---- views

class ViewStateDict implements HostStateDictSource {
  private readonly toInner = new Map<string, string>();
  constructor(private readonly inner: StateDictSource, rename: (key: string) => string | null) {
    for (const k of inner.keys()) {
      const n = rename(k);
      if (n === null) continue;
      if (this.toInner.has(n)) throw new Error(`state dict: keys ${JSON.stringify(this.toInner.get(n))} and ${JSON.stringify(k)} both map to ${JSON.stringify(n)}`);
      this.toInner.set(n, k);
    }
  }
  private innerKey(key: string): string {
    const k = this.toInner.get(key);
    if (k === undefined) throw unknownKey("state dict view", key, this.keys());
    return k;
  }
  keys(): string[] { return [...this.toInner.keys()]; }
  shape(key: string): readonly number[] { return this.inner.shape(this.innerKey(key)); }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor { return this.inner.load(this.innerKey(key), opts); }
  readFloat32(key: string): Float32Array {
    const inner = this.inner as Partial<HostStateDictSource>;
    if (typeof inner.readFloat32 !== "function") throw new TypeError("state dict view: the underlying source cannot read values on the host");
    return inner.readFloat32(this.innerKey(key));
  }
}

/** The keys of `source` for which `keep(key)` is true. */
export function filterStateDict(source: StateDictSource, keep: (key: string) => boolean): HostStateDictSource {
  return new ViewStateDict(source, (k) => (keep(k) ? k : null));
}

/** The keys of `source` under `prefix`, with the prefix removed. */
export function prefixStateDict(source: StateDictSource, prefix: string): HostStateDictSource {
  return new ViewStateDict(source, (k) => (k.startsWith(prefix) ? k.slice(prefix.length) : null));
}

/** `source` with every key renamed by `mapKey` (null drops a key). */
export function renameStateDict(source: StateDictSource, mapKey: (key: string) => string | null): HostStateDictSource {
  return new ViewStateDict(source, mapKey);
}

/** True when the two sources hold the same keys with the same shapes (values are not compared). */
export function sameKeysAndShapes(a: StateDictSource, b: StateDictSource): boolean {
  const ka = a.keys().sort(), kb = b.keys().sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && sameShape(a.shape(k), b.shape(k)));
}
