// Typed-array views of reference tensors for the golden suites, over the library's own reader
// (lib/io/safetensors.ts validates the header and reads lazily by offset).
import { SafetensorsFile as LibSafetensorsFile } from "../../lib/io/safetensors";
import { float16BitsToNumber } from "../../lib/io/half";

export type StDtype = "F16" | "F32" | "F64" | "I64" | "U8";

export interface StTensor {
  dtype: StDtype;
  shape: number[];
  /** F32 -> Float32Array, F64 -> Float64Array, I64 -> BigInt64Array, U8 -> Uint8Array, F16 -> Uint16Array (raw bits). */
  data: Float32Array | Float64Array | BigInt64Array | Uint8Array | Uint16Array;
}

export class SafetensorsFile {
  readonly names: string[];

  private constructor(private readonly file: LibSafetensorsFile) {
    this.names = file.keys().sort();
  }

  static read(path: string): SafetensorsFile {
    return new SafetensorsFile(LibSafetensorsFile.open(path));
  }

  has(name: string): boolean {
    return this.file.has(name);
  }

  get(name: string): StTensor {
    const info = this.file.info(name);
    // Copy into a fresh (aligned) buffer so typed-array views are valid.
    const bytes = new Uint8Array(this.file.read(name));
    let data: StTensor["data"];
    switch (info.dtype) {
      case "F16": data = new Uint16Array(bytes.buffer); break;
      case "F32": data = new Float32Array(bytes.buffer); break;
      case "F64": data = new Float64Array(bytes.buffer); break;
      case "I64": data = new BigInt64Array(bytes.buffer); break;
      case "U8": data = bytes; break;
      default: throw new RangeError(`${name}: unsupported dtype ${info.dtype}`);
    }
    return { dtype: info.dtype as StDtype, shape: info.shape.slice(), data };
  }

  /** Any numeric tensor as plain numbers (I64 via Number, F16 decoded). */
  numbers(name: string): number[] {
    const t = this.get(name);
    if (t.dtype === "F16") return Array.from(t.data as Uint16Array, float16BitsToNumber);
    if (t.dtype === "I64") return Array.from(t.data as BigInt64Array, Number);
    return Array.from(t.data as ArrayLike<number>);
  }
}
