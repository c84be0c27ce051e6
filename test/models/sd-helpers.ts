/**
 * Helpers for the U-Net / VAE parity suites: a StateDictSource over a safetensors file (until
 * lib/io/state-dict.ts lands), reference tensors as Tensors, hook capture, and the README's
 * `max|ours - ref| <= 1e-4 * max(1, max|ref|)` check with a per-component worst-error log.
 */
import { Tensor, keep, type DType, type DeviceName } from "../../lib";
import type { StateDictSource } from "../../lib/nn";
import { SafetensorsFile } from "../../lib/io/safetensors";

export class SafetensorsSource implements StateDictSource {
  constructor(readonly file: SafetensorsFile) {}
  keys(): string[] { return this.file.keys(); }
  shape(key: string): readonly number[] { return this.file.info(key).shape; }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor {
    return Tensor.fromArray(this.file.readFloat32(key), this.file.info(key).shape, opts);
  }
}

/** A reference tensor as float32 (or int64 for I64 data when `keepInt`). */
export function refTensor(file: SafetensorsFile, name: string, keepInt = false): Tensor {
  const info = file.info(name);
  if (keepInt && info.dtype === "I64") {
    const b = file.read(name);
    const data = new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
    return Tensor.fromArray(data, info.shape);
  }
  return Tensor.fromArray(file.readFloat32(name), info.shape);
}

/** Collects the hooked activations whose names are in `wanted` (kept past the forward's tidy). */
export function captureHooks(wanted: Iterable<string>) {
  const want = new Set(wanted);
  const captured = new Map<string, Tensor>();
  const seen = new Set<string>();
  const hooks = (name: string, value: () => Tensor) => {
    seen.add(name);
    if (!want.has(name)) return;
    captured.get(name)?.dispose();
    captured.set(name, keep(value()));
  };
  return { hooks, captured, seen };
}

/** max|a - e| / max(1, max|e|), with a shape check; throws on length mismatch or NaN. */
export function relError(actual: Float32Array, expected: Float32Array, label: string): number {
  if (actual.length !== expected.length) throw new Error(`${label}: ${actual.length} values, expected ${expected.length}`);
  let maxDiff = 0, maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : d;
    const r = Math.abs(expected[i]);
    if (r > maxRef) maxRef = r;
  }
  return maxDiff / Math.max(1, maxRef);
}

export const TOLERANCE = 1e-4;

/** Worst relative error per component, printed once at the end of a suite. */
export class ErrorLog {
  private readonly worst = new Map<string, { err: number; where: string }>();
  record(component: string, err: number, where: string): void {
    const w = this.worst.get(component);
    if (!w || err > w.err) this.worst.set(component, { err, where });
  }
  report(title: string): string {
    const lines = [...this.worst].map(([c, { err, where }]) => `  ${c.padEnd(28)} ${err.toExponential(2)}  (${where})`);
    return `${title}: worst max|ours-ref|/max(1,max|ref|)\n${lines.join("\n")}`;
  }
}

/** Compares a tensor with a reference array, records it, and returns the error. */
export async function compareTensor(log: ErrorLog, component: string, where: string, t: Tensor, expected: Float32Array,
  expectedShape: readonly number[]): Promise<number> {
  expect([...t.shape]).toEqual([...expectedShape]);
  const err = relError(await t.toFloat32Array(), expected, where);
  log.record(component, err, where);
  return err;
}
