/**
 * A1111's variation seeds ("Variation seed" / "Variation seed strength"): image k's starting noise
 * is slerp(strength, noise(seed + k), noise(variationSeed + k)), so a strength of 0 is the seed's
 * image and small strengths give nearby variations of it. The interpolation is A1111's slerp on
 * each image's [C, H, W] noise, as A1111 computes it: norms and dot products along H (dim 1) for
 * each channel and column, and its near-parallel fallback low·val + high·(1 - val).
 */
import { TorchGenerator, randnTensor } from "../random/torch-generator";

export interface VariationOptions {
  /** The second seed; image k uses seed + k. */
  seed: number;
  /** 0 (the main seed's noise) .. 1 (the variation seed's). */
  strength: number;
}

export function resolveVariation(op: string, v: unknown, hasCustomNoise: boolean): VariationOptions | null {
  if (v === undefined) return null;
  if (v === null || typeof v !== "object") throw new TypeError(`${op}: variation must be { seed, strength }`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== "seed" && k !== "strength") throw new RangeError(`${op}: variation has no option ${JSON.stringify(k)}`);
  if (typeof o.seed !== "number" || !Number.isInteger(o.seed) || o.seed < 0 || o.seed > Number.MAX_SAFE_INTEGER - 256)
    throw new RangeError(`${op}: variation.seed must be a non-negative integer, got ${JSON.stringify(o.seed)}`);
  if (typeof o.strength !== "number" || !(o.strength >= 0 && o.strength <= 1)) throw new RangeError(`${op}: variation.strength must be in [0, 1], got ${JSON.stringify(o.strength)}`);
  if (hasCustomNoise) throw new RangeError(`${op}: variation draws seeded noise; it does not combine with latents or generator`);
  return { seed: o.seed, strength: o.strength };
}

/** A1111's slerp(val, low, high) on one image's [C, H, W] noise (see the top of this file). */
export function slerpA1111(val: number, low: Float32Array, high: Float32Array, C: number, H: number, W: number): Float32Array {
  const cols = C * W, dot = new Float64Array(cols);
  const norm = (x: Float32Array) => {
    const n = new Float64Array(cols);
    for (let c = 0; c < C; c++) for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) n[c * W + w] += x[(c * H + h) * W + w] ** 2;
    return n.map(Math.sqrt);
  };
  const nl = norm(low), nh = norm(high);
  for (let c = 0; c < C; c++) for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) {
    const i = (c * H + h) * W + w, j = c * W + w;
    dot[j] += (low[i] / nl[j]) * (high[i] / nh[j]);
  }
  const out = new Float32Array(low.length);
  if (dot.reduce((a, b) => a + b, 0) / cols > 0.9995) {
    for (let i = 0; i < out.length; i++) out[i] = low[i] * val + high[i] * (1 - val);
    return out;
  }
  for (let c = 0; c < C; c++) for (let w = 0; w < W; w++) {
    const j = c * W + w, omega = Math.acos(dot[j]), so = Math.sin(omega);
    const a = Math.sin((1 - val) * omega) / so, b = Math.sin(val * omega) / so;
    for (let h = 0; h < H; h++) {
      const i = (c * H + h) * W + w;
      out[i] = a * low[i] + b * high[i];
    }
  }
  return out;
}

/** The batch's noise [B, C, H, W] with each image moved towards its variation seed's noise. */
export function applyVariation(noise: Float32Array, shape: readonly number[], v: VariationOptions): Float32Array {
  if (v.strength === 0) return noise;
  const [B, C, H, W] = shape, per = C * H * W;
  const sub = randnTensor(shape, Array.from({ length: B }, (_, k) => new TorchGenerator(v.seed + k)));
  const out = new Float32Array(noise.length);
  for (let k = 0; k < B; k++) out.set(slerpA1111(v.strength, noise.subarray(k * per, (k + 1) * per), sub.subarray(k * per, (k + 1) * per), C, H, W), k * per);
  return out;
}
