/**
 * Shared pieces of the suites against cases/training.safetensors (PyTorch gradients on tiny-sd):
 * the case file, reference tensors, parameter gradients read back in checkpoint layout, and the
 * README's training tolerances with a worst-error report.
 */
import * as fs from "fs";
import * as path from "path";
import { Tensor } from "../../lib/tensor";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { SafetensorsStateDict } from "../../lib/io/state-dict";
import type { Module } from "../../lib/nn/module";
import { referencePath } from "../helpers/reference";

export interface TrainingManifest {
  cases: Record<string, any>;
  fp64_check: { grad_scale: Record<string, number>; structurally_zero: string[] };
  tensors: Record<string, { shape: number[]; dtype: string }>;
}

export function openTraining(): { file: SafetensorsFile; manifest: TrainingManifest } {
  const file = SafetensorsFile.open(referencePath("cases", "training.safetensors"));
  const manifest = JSON.parse(fs.readFileSync(referencePath("cases", "training_manifest.json"), "utf8")) as TrainingManifest;
  return { file, manifest };
}

/** Loads models/tiny-sd/<sub> into `m` (float32, CPU). */
export function loadTinySd<M extends Module>(m: M, sub: string, weights: string): M {
  const sd = SafetensorsStateDict.open(path.join(referencePath("models", "tiny-sd", sub), weights));
  try { m.loadStateDict(sd); } finally { sd.close(); }
  return m;
}

export function readJson(...p: string[]): any {
  return JSON.parse(fs.readFileSync(referencePath(...p), "utf8"));
}

export function refTensor(file: SafetensorsFile, name: string): Tensor {
  const info = file.info(name);
  if (info.dtype === "I64") {
    const b = file.read(name);
    return Tensor.fromArray(new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)), info.shape);
  }
  return Tensor.fromArray(file.readFloat32(name), info.shape);
}

/** Every parameter's gradient in checkpoint (PyTorch) layout, by dotted name. */
export async function checkpointGrads(m: Module): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  const specs = new Map(m.namedParameterSpecs().map(([n, s]) => [n, s]));
  for (const [name, p] of m.namedParameters()) {
    const spec = specs.get(name)!;
    const g = p.grad;
    if (!g) continue;
    const t = spec.toCheckpoint ? spec.toCheckpoint(g) : g;
    out.set(name, await t.toFloat32Array());
    if (t !== g) t.dispose();
  }
  return out;
}

export interface Stat { max: number; sumSq: number }
const stat = (a: ArrayLike<number>): Stat => {
  let max = 0, sumSq = 0;
  for (let i = 0; i < a.length; i++) { max = Math.max(max, Math.abs(a[i])); sumSq += a[i] * a[i]; }
  return { max, sumSq };
};

/** max|a - e| / max|e| (0/0 = 0), and the squared norms for a global relative L2. */
export function compare(a: ArrayLike<number>, e: ArrayLike<number>): { rel: number; diffSq: number; refSq: number; maxAbs: number } {
  if (a.length !== e.length) throw new Error(`length ${a.length} != ${e.length}`);
  let maxDiff = 0, diffSq = 0;
  for (let i = 0; i < e.length; i++) {
    const d = Math.abs(a[i] - e[i]);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : d;
    diffSq += d * d;
  }
  const { max, sumSq } = stat(e);
  return { rel: max > 0 ? maxDiff / max : maxDiff, diffSq, refSq: sumSq, maxAbs: stat(a).max };
}

/**
 * Checks every parameter gradient of a case: max|ours - ref| <= 1e-4 max|ref| per tensor
 * (structurally zero ones: max|ours| <= 1e-5 grad_scale), and ||ours - ref|| / ||ref|| <= 2e-5
 * over all of them. Returns report lines.
 */
export function checkParamGrads(
  caseName: string, file: SafetensorsFile, manifest: TrainingManifest, ours: Map<string, Float32Array>, names: string[],
): { lines: string[]; failures: string[] } {
  const zero = new Set(manifest.fp64_check.structurally_zero);
  const scale = manifest.fp64_check.grad_scale[caseName];
  const failures: string[] = [];
  let worst = 0, worstName = "", diffSq = 0, refSq = 0, worstZero = 0;
  const rels: number[] = [];
  for (const name of names) {
    const key = `${caseName}.grad.${name}`;
    const got = ours.get(name);
    if (!got) { failures.push(`${name}: no gradient`); continue; }
    const ref = file.readFloat32(key);
    const c = compare(got, ref);
    if (zero.has(key)) {
      worstZero = Math.max(worstZero, c.maxAbs / scale);
      if (!(c.maxAbs <= 1e-5 * scale)) failures.push(`${name} (structurally zero): max|ours| ${c.maxAbs.toExponential(3)}`);
      continue;
    }
    diffSq += c.diffSq;
    refSq += c.refSq;
    rels.push(c.rel);
    if (c.rel > worst) { worst = c.rel; worstName = name; }
    if (!(c.rel <= 1e-4)) failures.push(`${name}: max|diff|/max|ref| ${c.rel.toExponential(3)}`);
  }
  const l2 = Math.sqrt(diffSq / refSq);
  if (!(l2 <= 2e-5)) failures.push(`all gradients: ||diff||/||ref|| ${l2.toExponential(3)}`);
  rels.sort((a, b) => a - b);
  const median = rels.length ? rels[Math.floor(rels.length / 2)] : 0;
  return {
    lines: [`${caseName}: ${rels.length} gradients, worst ${worst.toExponential(2)} (${worstName}), median ${median.toExponential(2)}, ` +
      `all-gradient rel L2 ${l2.toExponential(2)}; structurally zero max|ours|/grad_scale ${worstZero.toExponential(2)}`],
    failures,
  };
}
