/**
 * Helpers for the pipeline suites: reference tensors, the README's error measures, a noise
 * source that replays saved draws, and a per-suite worst-error log printed at the end.
 */
import type { NoiseSource } from "../../lib/schedulers";
import { SafetensorsFile, writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { ModelFolder, openWeightsFile } from "../../lib/io/model-folder";
import { readAllFloat32, type HostStateDictSource } from "../../lib/io/state-dict";
import { convertDiffusersToSingleFile } from "../../lib/models/single-file";
import { renameLegacyVaeKey } from "../../lib/models/autoencoder-kl";

/** max|a - e| / max(1, max|e|) (the README's pipeline / component measure); NaN counts as Infinity. */
export function relError(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string): number {
  if (actual.length !== expected.length) throw new Error(`${label}: ${actual.length} values, expected ${expected.length}`);
  let maxDiff = 0, maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : d;
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  return maxDiff / Math.max(1, maxRef);
}

/** max|a - e| */
export function absError(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string): number {
  if (actual.length !== expected.length) throw new Error(`${label}: ${actual.length} values, expected ${expected.length}`);
  let m = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** uint8 comparison: the largest difference and the fraction of values that differ at all. */
export function uint8Diff(actual: Uint8Array, expected: Uint8Array): { max: number; fraction: number } {
  if (actual.length !== expected.length) throw new Error(`uint8: ${actual.length} values, expected ${expected.length}`);
  let max = 0, n = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (d) n++;
    if (d > max) max = d;
  }
  return { max, fraction: n / expected.length };
}

/** Saved draws handed out in order; each call must ask for exactly the next draw's size. */
export class ReplayNoise implements NoiseSource {
  private next = 0;
  readonly calls: number[][] = [];
  constructor(private readonly draws: Float32Array[]) {}
  randn(shape: readonly number[]): Float32Array {
    this.calls.push([...shape]);
    const n = shape.reduce((a, b) => a * b, 1);
    const d = this.draws[this.next++];
    if (!d) throw new Error(`ReplayNoise: draw #${this.next - 1} of shape [${shape.join(",")}] requested, only ${this.draws.length} saved`);
    if (d.length !== n) throw new Error(`ReplayNoise: draw #${this.next - 1} has ${d.length} values, shape [${shape.join(",")}] needs ${n}`);
    return d.slice();
  }
  get used(): number {
    return this.next;
  }
}

/** Splits a saved [k, ...] tensor into its k draws. */
export function splitDraws(file: SafetensorsFile, name: string): Float32Array[] {
  const all = file.readFloat32(name);
  const k = file.info(name).shape[0];
  const per = all.length / k;
  return Array.from({ length: k }, (_, i) => all.slice(i * per, (i + 1) * per));
}

export function readU8(file: SafetensorsFile, name: string): Uint8Array {
  const b = file.read(name);
  return new Uint8Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

export function readI64(file: SafetensorsFile, name: string): number[] {
  const b = file.read(name);
  return Array.from(new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)), Number);
}

/** Worst error per quantity, printed once per suite. */
export class ErrorLog {
  private readonly rows = new Map<string, { err: number; where: string }>();
  record(what: string, err: number, where: string): number {
    const w = this.rows.get(what);
    if (!w || err > w.err) this.rows.set(what, { err, where });
    return err;
  }
  report(title: string): string {
    return `${title}\n${[...this.rows].map(([k, { err, where }]) => `  ${k.padEnd(24)} ${err.toExponential(2)}  (${where})`).join("\n")}`;
  }
}

/** Writes a diffusers folder as one original-format (LDM key names) float32 checkpoint. */
export function writeSingleFile(folder: string, out: string): void {
  const f = ModelFolder.open(folder);
  const srcs: HostStateDictSource[] = [];
  const open = (n: string, mapKey?: (k: string) => string | null) => { const s = openWeightsFile(f.weightsLocation(n).file, { mapKey }); srcs.push(s); return s; };
  const sd = convertDiffusersToSingleFile(
    { unet: open("unet"), vae: open("vae", renameLegacyVaeKey), textEncoder: open("text_encoder", (k) => (k.endsWith("position_ids") ? null : k)) },
    { unet: f.config("unet"), vae: f.config("vae"), textEncoder: f.config("text_encoder") });
  const rec: Record<string, SafetensorsTensorInput> = {};
  for (const [k, t] of readAllFloat32(sd)) rec[k] = { dtype: "F32", shape: [...t.shape], data: t.data };
  for (const s of srcs) (s as unknown as { close(): void }).close();
  writeSafetensors(out, rec);
}
