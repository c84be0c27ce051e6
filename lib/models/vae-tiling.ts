/**
 * Tiled VAE decoding, as diffusers' AutoencoderKL.tiled_decode (0.27.2): latents larger than one
 * tile are decoded in overlapping tiles (a step of 3/4 of a tile by default), each tile is blended
 * into the tile above and the tile to its left over the overlap with linear ramps, and the tiles
 * are cropped to the step and joined. The decoder's working memory is then that of one tile,
 * whatever the image size, at the price of small seams where the receptive field is cut. The tiles
 * are read back and blended on the host, in float32, in diffusers' order (blends update tiles in
 * place, so a tile's right and bottom edges are blended again by its neighbours).
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import type { AutoencoderKL } from "./autoencoder-kl";

export interface VaeTilingOptions {
  /** Tile side in pixels, a multiple of the VAE scale factor. Default: the VAE's sample_size (512 for SD 1.5, 1024 for SDXL). */
  tileSize?: number;
  /** Fraction of a tile shared with the next, in [0, 0.5]. Default 0.25. */
  overlap?: number;
}

/** A decoded tile on the host: [C, h, w] float32. */
interface HostTile {
  data: Float32Array;
  h: number;
  w: number;
}

/** The tile geometry (latent tile, latent step, pixel blend width, pixel crop) for a VAE and options. */
export function tileGeometry(vae: AutoencoderKL, opts: VaeTilingOptions = {}): { tile: number; step: number; blend: number; keep: number } {
  const f = vae.config.scaleFactor;
  const s = vae.config.sampleSize;
  const sample = opts.tileSize ?? (Array.isArray(s) ? s[0] : s);
  const overlap = opts.overlap ?? 0.25;
  if (!Number.isInteger(sample) || sample < f || sample % f !== 0)
    throw new RangeError(`vaeTiling: tileSize must be a positive multiple of the VAE scale factor ${f}, got ${String(sample)}`);
  if (typeof overlap !== "number" || !(overlap >= 0 && overlap <= 0.5))
    throw new RangeError(`vaeTiling: overlap must be a number in [0, 0.5], got ${String(overlap)}`);
  const tile = sample / f;
  const step = Math.max(1, Math.floor(tile * (1 - overlap)));
  // each tile keeps one step of pixels (diffusers' sample - blend, the same for its default sizes), so the tiles add up to the image
  return { tile, step, blend: Math.floor(sample * overlap), keep: step * f };
}

/** b's first rows fade in from a's last rows (diffusers' blend_v), in place. */
function blendV(a: HostTile, b: HostTile, C: number, extent: number): void {
  const e = Math.min(a.h, b.h, extent);
  const f = Math.fround;
  for (let c = 0; c < C; c++)
    for (let y = 0; y < e; y++) {
      const wa = f(1 - y / e), wb = f(y / e);
      const ra = (c * a.h + a.h - e + y) * a.w, rb = (c * b.h + y) * b.w;
      for (let x = 0; x < b.w; x++) b.data[rb + x] = f(f(a.data[ra + x] * wa) + f(b.data[rb + x] * wb));
    }
}

/** b's first columns fade in from a's last columns (diffusers' blend_h), in place. */
function blendH(a: HostTile, b: HostTile, C: number, extent: number): void {
  const e = Math.min(a.w, b.w, extent);
  const f = Math.fround;
  for (let c = 0; c < C; c++)
    for (let y = 0; y < b.h; y++) {
      const ra = (c * a.h + y) * a.w + a.w - e, rb = (c * b.h + y) * b.w;
      for (let x = 0; x < e; x++) b.data[rb + x] = f(f(a.data[ra + x] * f(1 - x / e)) + f(b.data[rb + x] * f(x / e)));
    }
}

/**
 * Decodes one latent [1, L, h, w] (already divided by the scaling factor, in the VAE's dtype and
 * device) tile by tile; returns the image [1, C, h·f, w·f] as float32 on the host. Latents that fit
 * one tile are decoded whole (as diffusers does).
 */
export async function tiledDecode(vae: AutoencoderKL, z: Tensor, opts: VaeTilingOptions = {}): Promise<Float32Array> {
  if (z.ndim !== 4 || z.shape[0] !== 1) throw new RangeError(`tiledDecode: latents must be [1, L, h, w], got [${z.shape.join(",")}]`);
  const g = tileGeometry(vae, opts);
  const [, , h, w] = z.shape;
  const f = vae.config.scaleFactor, C = vae.config.outChannels;
  const decodeHost = async (part: Tensor): Promise<HostTile> => {
    const x = tidy(() => {
      const d = vae.decode(part);
      return d.dtype === "float32" && d.device === "cpu" ? d : d.to("cpu", "float32");
    });
    try {
      return { data: await x.toFloat32Array(), h: x.shape[2], w: x.shape[3] };
    } finally {
      x.dispose();
    }
  };
  if (h <= g.tile && w <= g.tile) return (await decodeHost(z)).data;
  const rows: HostTile[][] = [];
  for (let i = 0; i < h; i += g.step) {
    const row: HostTile[] = [];
    for (let j = 0; j < w; j += g.step) {
      const part = tidy(() => ops.contiguous(ops.slice(ops.slice(z, 2, i, Math.min(i + g.tile, h)), 3, j, Math.min(j + g.tile, w))));
      try {
        row.push(await decodeHost(part));
      } finally {
        part.dispose();
      }
    }
    rows.push(row);
  }
  const H = h * f, W = w * f;
  const out = new Float32Array(C * H * W);
  let y0 = 0;
  rows.forEach((row, i) => {
    let x0 = 0, rowH = 0;
    row.forEach((t, j) => {
      if (i > 0) blendV(rows[i - 1][j], t, C, g.blend);
      if (j > 0) blendH(row[j - 1], t, C, g.blend);
      const ch = Math.min(t.h, g.keep), cw = Math.min(t.w, g.keep);
      for (let c = 0; c < C; c++)
        for (let y = 0; y < ch; y++) out.set(t.data.subarray((c * t.h + y) * t.w, (c * t.h + y) * t.w + cw), (c * H + y0 + y) * W + x0);
      x0 += cw;
      rowH = ch;
    });
    y0 += rowH;
  });
  return out;
}

/** b's first rows (axis 2) or columns (axis 3) fade in from a's last ones (blend_v / blend_h), as a new tensor. */
function blendAxis(a: Tensor, b: Tensor, axis: 2 | 3, extent: number): Tensor {
  const e = Math.min(a.shape[axis], b.shape[axis], extent);
  if (e === 0) return b;
  const ramp = (k: (y: number) => number) => {
    const shape = [1, 1, 1, 1];
    shape[axis] = e;
    return Tensor.fromArray(Float32Array.from({ length: e }, (_, y) => k(y)), shape, { device: b.device, dtype: b.dtype });
  };
  const n = a.shape[axis];
  const head = ops.add(ops.mul(ops.slice(a, axis, n - e, n), ramp((y) => 1 - y / e)), ops.mul(ops.slice(b, axis, 0, e), ramp((y) => y / e)));
  return e === b.shape[axis] ? head : ops.concat([head, ops.slice(b, axis, e, b.shape[axis])], axis);
}

/**
 * diffusers' AutoencoderKL.tiled_encode: pixels [1, 3, H, W] (the VAE's dtype and device) encoded
 * in overlapping tiles whose moments are blended and cropped as tiled_decode's pixels are; the
 * posterior's mean and (clamped) log-variance [1, L, H/f, W/f]. Images within one tile are
 * encoded whole. Synchronous: the blends run on the device.
 */
export function tiledEncode(vae: AutoencoderKL, x: Tensor, opts: VaeTilingOptions = {}): { mean: Tensor; logvar: Tensor } {
  if (x.ndim !== 4 || x.shape[0] !== 1) throw new RangeError(`tiledEncode: pixels must be [1, C, H, W], got [${x.shape.join(",")}]`);
  const g = tileGeometry(vae, opts);
  const f = vae.config.scaleFactor, L = vae.config.latentChannels;
  const [, , H, W] = x.shape;
  const tile = g.tile * f, step = g.step * f;
  if (H <= tile && W <= tile) return vae.encode(x);
  const blend = Math.floor(g.tile * (opts.overlap ?? 0.25));
  return tidy(() => {
    const rows: Tensor[][] = [];
    for (let i = 0; i < H; i += step) {
      const row: Tensor[] = [];
      for (let j = 0; j < W; j += step) {
        const part = ops.slice(ops.slice(x, 2, i, Math.min(i + tile, H)), 3, j, Math.min(j + tile, W));
        const post = vae.encode(ops.contiguous(part));
        row.push(ops.concat([post.mean, post.logvar], 1));  // the moments, blended together as diffusers does
      }
      rows.push(row);
    }
    const joined = rows.map((row, i) => ops.concat(row.map((t, j) => {
      let b = t;
      if (i > 0) b = blendAxis(rows[i - 1][j], b, 2, blend);
      if (j > 0) b = blendAxis(row[j - 1], b, 3, blend);
      row[j] = b;  // later neighbours blend from the blended tile, as diffusers' in-place updates do
      return ops.slice(ops.slice(b, 2, 0, Math.min(b.shape[2], g.step)), 3, 0, Math.min(b.shape[3], g.step));
    }), 3));
    const moments = ops.concat(joined, 2);
    return { mean: ops.contiguous(ops.slice(moments, 1, 0, L)), logvar: ops.contiguous(ops.slice(moments, 1, L, 2 * L)) };
  });
}
