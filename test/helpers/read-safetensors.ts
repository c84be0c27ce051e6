// Minimal safetensors reader for tests (until the shared lib/io reader exists).
// Layout: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, raw LE data.
import * as fs from "fs";

export type StDtype = "F16" | "F32" | "F64" | "I64" | "U8";

export interface StTensor {
  dtype: StDtype;
  shape: number[];
  /** F32 -> Float32Array, F64 -> Float64Array, I64 -> BigInt64Array, U8 -> Uint8Array, F16 -> Uint16Array (raw bits). */
  data: Float32Array | Float64Array | BigInt64Array | Uint8Array | Uint16Array;
}

const BYTES: Record<StDtype, number> = { F16: 2, F32: 4, F64: 8, I64: 8, U8: 1 };

export class SafetensorsFile {
  readonly names: string[];
  private readonly header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  private readonly dataStart: number;

  constructor(private readonly buf: Buffer, readonly path = "<buffer>") {
    if (buf.length < 8) throw new RangeError(`${path}: file too short for a safetensors header`);
    const n = Number(buf.readBigUInt64LE(0));
    if (n > buf.length - 8) throw new RangeError(`${path}: header length ${n} exceeds file size ${buf.length}`);
    const json = JSON.parse(buf.toString("utf8", 8, 8 + n)) as Record<string, unknown>;
    delete json["__metadata__"];
    this.header = json as SafetensorsFile["header"];
    this.dataStart = 8 + n;
    this.names = Object.keys(this.header).sort();
  }

  static read(path: string): SafetensorsFile {
    return new SafetensorsFile(fs.readFileSync(path), path);
  }

  has(name: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.header, name);
  }

  get(name: string): StTensor {
    const h = this.header[name];
    if (!h) throw new RangeError(`${this.path}: no tensor named ${name}`);
    const dtype = h.dtype as StDtype;
    const size = BYTES[dtype];
    if (size === undefined) throw new RangeError(`${this.path}: ${name}: unsupported dtype ${h.dtype}`);
    const [b, e] = h.data_offsets;
    const count = h.shape.reduce((a, d) => a * d, 1);
    if (e - b !== count * size || this.dataStart + e > this.buf.length) {
      throw new RangeError(`${this.path}: ${name}: bad data_offsets [${b}, ${e}] for shape ${JSON.stringify(h.shape)}`);
    }
    // Copy into an aligned buffer so typed-array views are valid.
    const bytes = new Uint8Array(count * size);
    bytes.set(this.buf.subarray(this.dataStart + b, this.dataStart + e));
    let data: StTensor["data"];
    switch (dtype) {
      case "F16": data = new Uint16Array(bytes.buffer); break;
      case "F32": data = new Float32Array(bytes.buffer); break;
      case "F64": data = new Float64Array(bytes.buffer); break;
      case "I64": data = new BigInt64Array(bytes.buffer); break;
      case "U8": data = bytes; break;
    }
    return { dtype, shape: h.shape.slice(), data };
  }

  /** Any numeric tensor as plain numbers (I64 via Number, F16 decoded). */
  numbers(name: string): number[] {
    const t = this.get(name);
    if (t.dtype === "F16") return Array.from(t.data as Uint16Array, halfToFloat);
    if (t.dtype === "I64") return Array.from(t.data as BigInt64Array, Number);
    return Array.from(t.data as ArrayLike<number>);
  }
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
