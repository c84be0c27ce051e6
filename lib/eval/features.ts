// The retrieval feature of the built-in model's evaluation, and nearest-neighbour search.
//
// Feature of an image: its pixels composited over white (RGBA input) or taken as they are (RGB),
// area-resized to 32x32, as 3072 floats in [0, 1] (row-major HWC). Distance: squared Euclidean.
// With `histogramWeight` > 0 a 4x4x4-bin RGB colour histogram (fractions of the pixels, over the
// 32x32 image) is appended, scaled by that weight — off by default; the reported numbers use the
// pixels alone. Deliberately simple: an emoji generated for a caption counts as right when the
// training image of that caption is among its nearest training images by this distance.
import { compositeOver, resampleRGB, type RGBAImage } from "../train/data";
import type { RGBImage } from "../pipelines/images";

export const FEATURE_SIDE = 32;
export const HISTOGRAM_BINS = 4;

export interface FeatureOptions {
  /** Weight of the appended colour histogram (default 0: pixels only). */
  histogramWeight?: number;
}

function isRGBA(img: RGBImage | RGBAImage): boolean {
  return img.data.length === img.width * img.height * 4;
}

/** The feature vector of an RGB or RGBA 8-bit image (see the top of this file). */
export function imageFeature(img: RGBImage | RGBAImage, opts: FeatureOptions = {}): Float32Array {
  const { width: W, height: H } = img;
  if (!(W > 0 && H > 0)) throw new RangeError("imageFeature: empty image");
  let rgb: Float32Array;
  if (isRGBA(img)) rgb = compositeOver(img as RGBAImage, [255, 255, 255]);
  else if (img.data.length === W * H * 3) rgb = Float32Array.from(img.data);
  else throw new RangeError(`imageFeature: ${W}x${H} needs ${W * H * 3} (RGB) or ${W * H * 4} (RGBA) bytes, got ${img.data.length}`);
  const small = resampleRGB(rgb, W, H, FEATURE_SIDE, FEATURE_SIDE, W >= FEATURE_SIDE && H >= FEATURE_SIDE ? "area" : "bilinear");
  const hw = opts.histogramWeight ?? 0;
  const n = FEATURE_SIDE * FEATURE_SIDE * 3;
  const bins = HISTOGRAM_BINS ** 3;
  const out = new Float32Array(n + (hw > 0 ? bins : 0));
  for (let i = 0; i < n; i++) out[i] = Math.min(1, Math.max(0, small[i] / 255));
  if (hw > 0) {
    const px = FEATURE_SIDE * FEATURE_SIDE;
    for (let p = 0; p < px; p++) {
      const q = (c: number) => Math.min(HISTOGRAM_BINS - 1, Math.floor(out[3 * p + c] * HISTOGRAM_BINS));
      out[n + (q(0) * HISTOGRAM_BINS + q(1)) * HISTOGRAM_BINS + q(2)] += hw / px;
    }
  }
  return out;
}

/** Squared Euclidean distance. */
export function featureDistance(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new RangeError(`featureDistance: lengths ${a.length} and ${b.length} differ`);
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

/** Indices of the k nearest gallery features to `query`, nearest first (ties: lower index first). */
export function nearest(query: Float32Array, gallery: readonly Float32Array[], k: number): number[] {
  const d = gallery.map((g, i) => [featureDistance(query, g), i] as [number, number]);
  d.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  return d.slice(0, k).map((x) => x[1]);
}

/** PSNR in dB of two 8-bit images of the same size (255 peak); Infinity when identical. */
export function psnr(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) throw new RangeError(`psnr: lengths ${a.length} and ${b.length} differ`);
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  const mse = s / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}
