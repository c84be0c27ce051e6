/**
 * LoRA extraction (as kohya's extract_lora_from_models): for each layer a LoRA would adapt, the
 * difference between a fine-tuned model and its base, ΔW = W_tuned - W_base, is approximated by
 * its best rank-r factorisation up·down (truncated SVD), written as a kohya LoRA file (alpha = r,
 * so scale 1 gives the approximation). The SVD is randomized (Halko et al. 2011): a Gaussian
 * sketch, two power iterations, Gram-Schmidt, and the Jacobi eigen-decomposition of the small
 * k x k matrix; the large products run on the native GEMM. Layers that did not change are skipped.
 */
import * as fs from "fs";
import * as path from "path";
import { ModelFolder } from "../io/model-folder";
import { writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import type { SafetensorsStateDict } from "../io/state-dict";
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { LORA_CONV_TARGETS, LORA_TARGETS, LORA_TE_TARGETS } from "../train/lora-adapters";
import { kohyaLayerEntries, kohyaMetadata } from "./keys";
import { yieldToLoop } from "../train/loop";
import { TorchGenerator } from "../random/torch-generator";

export interface ExtractOptions {
  rank: number;
  /** 3x3 convolutions too, at this rank (LoCon). Default: none. */
  convRank?: number;
  /** The text encoder's attention and MLP layers too. Default false. */
  textEncoder?: boolean;
  /** A layer whose max |ΔW| is at most this is left out. Default 1e-7. */
  threshold?: number;
}

export interface ExtractResult { layers: number; skipped: number; file: string }

const OVERSAMPLE = 8, POWER_ITERATIONS = 2;

/** m x n row-major Float32Array A -> its best rank-r factors: up [m, r], down [r, n]. */
export async function lowRank(a: Float32Array, m: number, n: number, r: number, seed: number): Promise<{ up: Float32Array; down: Float32Array }> {
  const k = Math.min(r + OVERSAMPLE, m, n);
  const A = Tensor.fromArray(a, [m, n]);
  try {
    // range of A: Y = (A Aᵀ)^q A Ω, orthonormalised between products
    const omega = Tensor.fromArray(new TorchGenerator(seed).randn([n, k]), [n, k]);
    const At = tidy(() => ops.contiguous(ops.transpose(A, 0, 1)));
    let q = await orthonormalize(tidy(() => ops.matmul(A, omega)), m, k);
    omega.dispose();
    for (let i = 0; i < POWER_ITERATIONS; i++) {
      const z = await orthonormalize(tidy(() => ops.matmul(At, q)), n, k);
      q.dispose();
      q = await orthonormalize(tidy(() => ops.matmul(A, z)), m, k);
      z.dispose();
    }
    // B = Qᵀ A (k x n); B Bᵀ = U S² Uᵀ; A ≈ Q U S Vᵀ with Vᵀ = S⁻¹ Uᵀ B
    At.dispose();
    const b = tidy(() => ops.matmul(ops.contiguous(ops.transpose(q, 0, 1)), A));
    const bbt = tidy(() => ops.matmul(b, ops.contiguous(ops.transpose(b, 0, 1))));
    const { values, vectors } = jacobiEigen(Float64Array.from(await bbt.toFloat32Array()), k);
    bbt.dispose();
    const order = [...values.keys()].sort((x, y) => values[y] - values[x]).slice(0, r);
    const uk = new Float32Array(k * r);  // the top r eigenvectors as columns
    order.forEach((j, c) => { for (let i = 0; i < k; i++) uk[i * r + c] = vectors[i * k + j]; });
    const U = Tensor.fromArray(uk, [k, r]);
    const up = tidy(() => ops.matmul(q, U));                      // Q U (m x r)
    const down = tidy(() => ops.matmul(ops.contiguous(ops.transpose(U, 0, 1)), b)); // Uᵀ B = S Vᵀ (r x n)
    const upData = await up.toFloat32Array(), downData = await down.toFloat32Array();
    for (const t of [q, b, U, up, down]) t.dispose();
    // up·down = Q U Uᵀ B already; no square roots needed
    return { up: upData, down: downData };
  } finally {
    A.dispose();
  }
}

/** Modified Gram-Schmidt on the columns of a [rows, cols] tensor; returns a new tensor. */
async function orthonormalize(t: Tensor, rows: number, cols: number): Promise<Tensor> {
  const x = Float64Array.from(await t.toFloat32Array());
  t.dispose();
  for (let c = 0; c < cols; c++) {
    for (let p = 0; p < c; p++) {
      let dot = 0;
      for (let i = 0; i < rows; i++) dot += x[i * cols + c] * x[i * cols + p];
      for (let i = 0; i < rows; i++) x[i * cols + c] -= dot * x[i * cols + p];
    }
    let norm = 0;
    for (let i = 0; i < rows; i++) norm += x[i * cols + c] ** 2;
    norm = Math.sqrt(norm);
    for (let i = 0; i < rows; i++) x[i * cols + c] = norm > 1e-30 ? x[i * cols + c] / norm : 0;
  }
  return Tensor.fromArray(Float32Array.from(x), [rows, cols]);
}

/** Cyclic Jacobi eigen-decomposition of a symmetric k x k matrix (row-major): eigenvalues, eigenvectors as columns. */
export function jacobiEigen(a: Float64Array, k: number): { values: Float64Array; vectors: Float64Array } {
  const v = new Float64Array(k * k);
  for (let i = 0; i < k; i++) v[i * k + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < k; p++) for (let q = p + 1; q < k; q++) off += a[p * k + q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < k; p++) for (let q = p + 1; q < k; q++) {
      const apq = a[p * k + q];
      if (Math.abs(apq) < 1e-300) continue;
      const theta = (a[q * k + q] - a[p * k + p]) / (2 * apq);
      const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let i = 0; i < k; i++) {  // columns p, q
        const aip = a[i * k + p], aiq = a[i * k + q];
        a[i * k + p] = c * aip - s * aiq;
        a[i * k + q] = s * aip + c * aiq;
      }
      for (let i = 0; i < k; i++) {  // rows p, q
        const api = a[p * k + i], aqi = a[q * k + i];
        a[p * k + i] = c * api - s * aqi;
        a[q * k + i] = s * api + c * aqi;
      }
      for (let i = 0; i < k; i++) {
        const vip = v[i * k + p], viq = v[i * k + q];
        v[i * k + p] = c * vip - s * viq;
        v[i * k + q] = s * vip + c * viq;
      }
    }
  }
  return { values: Float64Array.from({ length: k }, (_, i) => a[i * k + i]), vectors: v };
}

/** Extracts a LoRA of `tuned` - `base` (both diffusers folders of the same architecture) into `out`. */
export async function extractLora(basePath: string, tunedPath: string, out: string, o: ExtractOptions): Promise<ExtractResult> {
  const base = ModelFolder.open(basePath), tuned = ModelFolder.open(tunedPath);
  const parts: [string, "unet" | "te", RegExp, number][] = [["unet", "unet", LORA_TARGETS, o.rank]];
  if (o.convRank) parts.push(["unet", "unet", LORA_CONV_TARGETS, o.convRank]);
  if (o.textEncoder) parts.push(["text_encoder", "te", LORA_TE_TARGETS, o.rank]);
  const threshold = o.threshold ?? 1e-7;
  const rec: Record<string, SafetensorsTensorInput> = {};
  let layers = 0, skipped = 0, seed = 0;
  for (const [component, prefix, targets, rank] of parts) {
    const [b, t] = [base.weights(component), tuned.weights(component)];
    try {
      for (const key of b.keys()) {
        const name = key.replace(/\.weight$/, "");
        if (!key.endsWith(".weight") || !targets.test(name)) continue;
        const shape = b.shape(key);
        if (!(shape.length === 2 || (shape.length === 4 && shape[2] === 3 && shape[3] === 3 && targets === LORA_CONV_TARGETS))) continue;
        const delta = difference(b, t, key);
        if (delta === null || maxAbs(delta) <= threshold) { skipped++; continue; }
        const m = shape[0], n = delta.length / m, r = Math.min(rank, m, n);
        const { up, down } = await lowRank(delta, m, n, r, seed++);
        Object.assign(rec, kohyaLayerEntries(prefix, name, { shape: shape.length === 4 ? [r, shape[1], 3, 3] : [r, n], data: down },
          { shape: shape.length === 4 ? [m, r, 1, 1] : [m, r], data: up }, r));
        layers++;
        await yieldToLoop();
      }
    } finally {
      b.close();
      t.close();
    }
  }
  if (layers === 0) throw new Error(`extract-lora: no layer differs between ${basePath} and ${tunedPath} (threshold ${threshold})`);
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  writeSafetensors(out, rec, kohyaMetadata(o.rank, o.rank));
  return { layers, skipped, file: path.resolve(out) };
}

function maxAbs(x: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

/** W_tuned - W_base for one key, or null when the tuned model lacks it or holds it in another shape. */
function difference(b: SafetensorsStateDict, t: SafetensorsStateDict, key: string): Float32Array | null {
  if (!t.has(key) || t.shape(key).join() !== b.shape(key).join()) return null;
  const x = t.readFloat32(key), y = b.readFloat32(key);
  for (let i = 0; i < x.length; i++) x[i] -= y[i];
  return x;
}
