/**
 * safetensors reader and writer. Format: an 8-byte little-endian header length N, N bytes of JSON
 * (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, offsets relative
 * to the data region that starts at 8 + N), then the raw little-endian tensor bytes.
 *
 * The reader validates the whole header before any tensor is read and reads each tensor lazily by
 * offset, so multi-GB checkpoints never have to fit in one Buffer.
 */
import * as fs from "fs";
import * as os from "os";
import { TemporaryFile, writeAll } from "./files";
import { bfloat16ToFloat32, float16ToFloat32 } from "./half";

export type SafetensorsDType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

export const SAFETENSORS_ITEMSIZE: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Same bound as the reference Rust implementation: a larger header is treated as corrupt. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsTensorInfo {
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute position of the tensor's first byte in the file (data region start + data_offsets[0]). */
  byteOffset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  /** N, the JSON header's length in bytes. */
  headerLength: number;
  /** 8 + N: where the data region starts in the file. */
  dataOffset: number;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsTensorInfo>;
}

export interface SafetensorsTensorInput {
  dtype: SafetensorsDType;
  shape: number[];
  data: ArrayBufferView;
}

const LITTLE_ENDIAN = os.endianness() === "LE";

function isDType(x: unknown): x is SafetensorsDType {
  return typeof x === "string" && Object.prototype.hasOwnProperty.call(SAFETENSORS_ITEMSIZE, x);
}

function elementCount(shape: number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isSafeNonNegInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Parses and validates a safetensors header. `buf` holds the file from byte 0, at least the 8 + N
 * header bytes; `fileSize` is the whole file's size, which bounds the data region. `source` names
 * the file in error messages.
 */
export function parseSafetensorsHeader(buf: Buffer, fileSize: number, source = "<buffer>"): SafetensorsHeader {
  const fail = (problem: string): never => {
    throw new Error(`safetensors ${source}: ${problem}`);
  };
  if (fileSize < 8 || buf.length < 8) fail(`file is ${fileSize} bytes, too short for the 8-byte header length`);
  const n64 = buf.readBigUInt64LE(0);
  if (n64 < 2n) fail(`header length ${n64} is too small (at least 2 bytes, "{}")`);
  if (n64 > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file?)`);
  const headerLength = Number(n64);
  const dataOffset = 8 + headerLength;
  if (dataOffset > fileSize) {
    fail(`header length ${headerLength} runs past the end of the file (${fileSize} bytes): truncated file?`);
  }
  if (buf.length < dataOffset) fail(`buffer holds ${buf.length} bytes, the header needs ${dataOffset}`);

  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString("utf8", 8, dataOffset));
  } catch (e) {
    return fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    fail("header JSON must be an object");
  }

  const dataSize = fileSize - dataOffset;
  const metadata: Record<string, string> = Object.create(null) as Record<string, string>;
  const tensors = new Map<string, SafetensorsTensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        fail("__metadata__ must be an object of strings");
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`__metadata__[${JSON.stringify(k)}] must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v as string;
      }
      continue;
    }
    const where = `tensor ${JSON.stringify(name)}`;
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) fail(`${where}: entry must be an object`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDType(dtype)) {
      fail(`${where}: unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(SAFETENSORS_ITEMSIZE).join(", ")})`);
    }
    if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) {
      fail(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSafeNonNegInt)) {
      fail(`${where}: data_offsets must be [begin, end] non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}] end before begin`);
    const count = elementCount(shape as number[]);
    const expected = count * SAFETENSORS_ITEMSIZE[dtype as SafetensorsDType];
    if (!Number.isSafeInteger(expected)) fail(`${where}: shape ${JSON.stringify(shape)} is too large`);
    if (end - begin !== expected) {
      fail(
        `${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes, but ${dtype} ${JSON.stringify(shape)} needs ${expected}`,
      );
    }
    if (end > dataSize) {
      fail(`${where}: data_offsets [${begin}, ${end}] lie outside the data region (${dataSize} bytes): truncated file?`);
    }
    tensors.set(name, {
      dtype: dtype as SafetensorsDType,
      shape: (shape as number[]).slice(),
      byteOffset: dataOffset + begin,
      byteLength: expected,
    });
    spans.push({ name, begin, end });
  }

  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1];
    const cur = spans[i];
    if (cur.begin < prev.end) {
      fail(
        `tensors ${JSON.stringify(prev.name)} [${prev.begin}, ${prev.end}] and ${JSON.stringify(cur.name)} [${cur.begin}, ${cur.end}] overlap`,
      );
    }
  }
  return { headerLength, dataOffset, metadata, tensors };
}

/** Reads exactly `length` bytes at `position`, in chunks (a single readSync is limited to 2 GiB). */
function readExactly(fd: number, length: number, position: number, source: string): Buffer {
  const out = Buffer.alloc(length);
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < length) {
    const want = Math.min(CHUNK, length - done);
    const got = fs.readSync(fd, out, done, want, BigInt(position + done));
    if (got === 0) {
      throw new Error(`safetensors ${source}: unexpected end of file at byte ${position + done} (truncated file?)`);
    }
    done += got;
  }
  return out;
}

/** A typed-array view of little-endian bytes, copying when the view would be misaligned. */
function aligned<T>(buf: Buffer, itemSize: number, make: (ab: ArrayBuffer, off: number, n: number) => T): T {
  const n = buf.length / itemSize;
  if (buf.byteOffset % itemSize === 0) return make(buf.buffer as ArrayBuffer, buf.byteOffset, n);
  const copy = new Uint8Array(buf.length);
  copy.set(buf);
  return make(copy.buffer, 0, n);
}

/** Converts raw little-endian tensor bytes of any supported dtype to float32. */
export function bytesToFloat32(bytes: Buffer, dtype: SafetensorsDType): Float32Array {
  const size = SAFETENSORS_ITEMSIZE[dtype];
  const n = bytes.length / size;
  if (!LITTLE_ENDIAN) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = readLE(dv, i * size, dtype);
    return out;
  }
  switch (dtype) {
    case "F32":
      return aligned(bytes, 4, (ab, off, k) => new Float32Array(ab, off, k));
    case "F64":
      return Float32Array.from(aligned(bytes, 8, (ab, off, k) => new Float64Array(ab, off, k)));
    case "F16":
      return float16ToFloat32(aligned(bytes, 2, (ab, off, k) => new Uint16Array(ab, off, k)));
    case "BF16":
      return bfloat16ToFloat32(aligned(bytes, 2, (ab, off, k) => new Uint16Array(ab, off, k)));
    case "I64": {
      // hi * 2^32 + lo is exact below 2^53; beyond that the float32 result is off by at most one rounding.
      const words = aligned(bytes, 4, (ab, off, k) => new Int32Array(ab, off, k));
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = words[2 * i + 1] * 4294967296 + (words[2 * i] >>> 0);
      return out;
    }
    case "I32":
      return Float32Array.from(aligned(bytes, 4, (ab, off, k) => new Int32Array(ab, off, k)));
    case "I16":
      return Float32Array.from(aligned(bytes, 2, (ab, off, k) => new Int16Array(ab, off, k)));
    case "I8":
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, n));
    case "U8":
    case "BOOL":
      return Float32Array.from(bytes);
  }
}

function readLE(dv: DataView, at: number, dtype: SafetensorsDType): number {
  switch (dtype) {
    case "F64":
      return dv.getFloat64(at, true);
    case "F32":
      return dv.getFloat32(at, true);
    case "F16":
      return float16ToFloat32(Uint16Array.of(dv.getUint16(at, true)))[0];
    case "BF16":
      return bfloat16ToFloat32(Uint16Array.of(dv.getUint16(at, true)))[0];
    case "I64":
      return Number(dv.getBigInt64(at, true));
    case "I32":
      return dv.getInt32(at, true);
    case "I16":
      return dv.getInt16(at, true);
    case "I8":
      return dv.getInt8(at);
    case "U8":
    case "BOOL":
      return dv.getUint8(at);
  }
}

export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  /** Where the data region starts in the file (8 + header length). */
  readonly dataOffset: number;
  readonly fileSize: number;
  private fd: number | null;
  private readonly tensors: Map<string, SafetensorsTensorInfo>;

  private constructor(file: string, fd: number, fileSize: number, header: SafetensorsHeader) {
    this.path = file;
    this.fd = fd;
    this.fileSize = fileSize;
    this.metadata = header.metadata;
    this.dataOffset = header.dataOffset;
    this.tensors = header.tensors;
  }

  /** Opens a file and validates its header; tensor data is read only on `read()`. */
  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, "r");
    } catch (e) {
      throw new Error(`safetensors ${file}: cannot open: ${(e as Error).message}`);
    }
    try {
      const fileSize = fs.fstatSync(fd).size;
      if (fileSize < 8) {
        throw new Error(`safetensors ${file}: file is ${fileSize} bytes, too short for the 8-byte header length`);
      }
      const lenBuf = readExactly(fd, 8, 0, file);
      const n = lenBuf.readBigUInt64LE(0);
      // Validate the length before allocating for it; parseSafetensorsHeader words the error.
      if (n < 2n || n > BigInt(MAX_HEADER_BYTES) || 8n + n > BigInt(fileSize)) {
        parseSafetensorsHeader(lenBuf, fileSize, file);
      }
      const headerBuf = Buffer.concat([lenBuf, readExactly(fd, Number(n), 8, file)]);
      return new SafetensorsFile(file, fd, fileSize, parseSafetensorsHeader(headerBuf, fileSize, file));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in header order (sorted by name for files from writeSafetensors). */
  keys(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) {
      const some = this.keys().slice(0, 5).map((k) => JSON.stringify(k)).join(", ");
      throw new Error(
        `safetensors ${this.path}: no tensor named ${JSON.stringify(name)} (${this.tensors.size} tensors, e.g. ${some})`,
      );
    }
    return { dtype: t.dtype, shape: t.shape.slice(), byteOffset: t.byteOffset, byteLength: t.byteLength };
  }

  /** The tensor's raw little-endian bytes, read from disk now. */
  read(name: string): Buffer {
    const t = this.info(name);
    if (this.fd === null) throw new Error(`safetensors ${this.path}: file is closed`);
    return readExactly(this.fd, t.byteLength, t.byteOffset, this.path);
  }

  /** The tensor converted to float32 (from F16/BF16/F32/F64 and the integer/bool dtypes). */
  readFloat32(name: string): Float32Array {
    return bytesToFloat32(this.read(name), this.info(name).dtype);
  }

  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// ---- writer ----

/** Checks a tensor's name, dtype and shape for writing; returns its byte length. */
function checkedByteLength(name: string, dtype: unknown, shape: unknown): number {
  const where = `writeSafetensors: tensor ${JSON.stringify(name)}`;
  if (name === "__metadata__") throw new Error(`writeSafetensors: "__metadata__" is reserved and cannot name a tensor`);
  if (!isDType(dtype)) {
    throw new TypeError(`${where}: unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(SAFETENSORS_ITEMSIZE).join(", ")})`);
  }
  if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) {
    throw new TypeError(`${where}: shape must be non-negative integers, got ${JSON.stringify(shape)}`);
  }
  return elementCount(shape) * SAFETENSORS_ITEMSIZE[dtype];
}

/** Checks one input tensor and returns its bytes, little-endian. */
function tensorBytes(name: string, t: SafetensorsTensorInput): Buffer {
  const where = `writeSafetensors: tensor ${JSON.stringify(name)}`;
  const expected = checkedByteLength(name, t.dtype, t.shape);
  if (!ArrayBuffer.isView(t.data)) throw new TypeError(`${where}: data must be a typed array, Buffer or DataView`);
  const size = SAFETENSORS_ITEMSIZE[t.dtype];
  // Raw bytes (Uint8Array, Buffer, DataView) fit any dtype; a typed array must have the dtype's
  // element size, and F32/F64 need Float32Array/Float64Array while integer dtypes refuse float arrays.
  const raw = t.data instanceof Uint8Array || t.data instanceof DataView;
  const per = (t.data as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT;
  const isFloatArray = t.data instanceof Float32Array || t.data instanceof Float64Array;
  const fits =
    t.dtype === "F32" ? t.data instanceof Float32Array
    : t.dtype === "F64" ? t.data instanceof Float64Array
    : per === size && !isFloatArray;
  if (!raw && !fits) {
    throw new TypeError(
      `${where}: ${t.data.constructor.name} data does not fit dtype ${t.dtype} (pass raw bytes as a Uint8Array to override)`,
    );
  }
  if (t.data.byteLength !== expected) {
    throw new RangeError(
      `${where}: ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected} bytes, data has ${t.data.byteLength}`,
    );
  }
  const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  if (LITTLE_ENDIAN || raw || size === 1) return bytes;
  const swapped = Buffer.from(bytes);
  if (size === 2) swapped.swap16();
  else if (size === 4) swapped.swap32();
  else swapped.swap64();
  return swapped;
}

/** One tensor's entry in a header: its name, dtype, shape, and the length of its data in bytes. */
interface HeaderEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  byteLength: number;
}

/**
 * Header bytes (length prefix + JSON padded with spaces to a multiple of 8). The data follows in
 * the entries' order, which the caller has sorted.
 */
function headerBytes(entries: readonly HeaderEntry[], metadata?: Record<string, string>): Buffer {
  // Entries are serialised by hand so that any key (even "__proto__") round-trips.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const meta: string[] = [];
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new TypeError(`writeSafetensors: metadata[${JSON.stringify(k)}] must be a string`);
      meta.push(JSON.stringify(k) + ":" + JSON.stringify(v));
    }
    parts.push(`"__metadata__":{${meta.join(",")}}`);
  }
  let offset = 0;
  for (const e of entries) {
    const info = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.byteLength] };
    parts.push(JSON.stringify(e.name) + ":" + JSON.stringify(info));
    offset += e.byteLength;
  }
  let json = "{" + parts.join(",") + "}";
  const jsonBytes = Buffer.byteLength(json, "utf8");
  json += " ".repeat((8 - (jsonBytes % 8)) % 8);
  const jsonBuf = Buffer.from(json, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(jsonBuf.length), 0);
  return Buffer.concat([prefix, jsonBuf]);
}

/** Header bytes and the data chunks. */
function layout(
  tensors: Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): { header: Buffer; chunks: Buffer[] } {
  const names = Object.keys(tensors).sort();
  const chunks = names.map((name) => tensorBytes(name, tensors[name]));
  const entries = names.map((name, i) => ({ name, dtype: tensors[name].dtype, shape: tensors[name].shape, byteLength: chunks[i].length }));
  return { header: headerBytes(entries, metadata), chunks };
}

/** The whole file in memory. */
export function serializeSafetensors(
  tensors: Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): Buffer {
  const { header, chunks } = layout(tensors, metadata);
  return Buffer.concat([header, ...chunks]);
}

/** Writes a file (via a temporary file renamed into place, so readers never see a partial file). */
export function writeSafetensors(
  file: string,
  tensors: Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): void {
  const { header, chunks } = layout(tensors, metadata);
  TemporaryFile.write(file, (fd) => { for (const chunk of [header, ...chunks]) writeAll(fd, chunk); });
}

/** A tensor whose data `writeSafetensorsStreaming` asks for when its turn comes. */
export interface SafetensorsTensorSpec {
  dtype: SafetensorsDType;
  shape: number[];
}

/**
 * Writes a file whose tensors are produced one at a time, so that only one tensor's bytes are in
 * memory at once (a model read back from a GPU, a checkpoint converted while it is written). The
 * header is written from the specs first; `bytesOf(name)` must then give exactly the bytes the
 * spec promises, little-endian. Atomic like writeSafetensors.
 */
export async function writeSafetensorsStreaming(
  file: string,
  specs: Record<string, SafetensorsTensorSpec>,
  bytesOf: (name: string) => Promise<Uint8Array> | Uint8Array,
  metadata?: Record<string, string>,
): Promise<void> {
  const names = Object.keys(specs).sort();
  const entries = names.map((name) => {
    const { dtype, shape } = specs[name];
    const byteLength = checkedByteLength(name, dtype, shape);
    return { name, dtype, shape: [...shape], byteLength };
  });
  const header = headerBytes(entries, metadata);
  await TemporaryFile.writeAsync(file, async (fd) => {
    writeAll(fd, header);
    for (const e of entries) {
      const bytes = await bytesOf(e.name);
      if (!(bytes instanceof Uint8Array) || bytes.byteLength !== e.byteLength)
        throw new RangeError(`writeSafetensors: tensor ${JSON.stringify(e.name)}: ${e.dtype} ${JSON.stringify(e.shape)} needs ${e.byteLength} bytes, got ${bytes instanceof Uint8Array ? bytes.byteLength : typeof bytes}`);
      writeAll(fd, bytes);
    }
  });
}
