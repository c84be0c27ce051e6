/**
 * Tiled VAE decoding, as diffusers' AutoencoderKL.tiled_decode (0.27.2): latents larger than one
 * tile are decoded in overlapping tiles (a step of 3/4 of a tile by default), each tile is blended
 * into the tile above and the tile to its left over the overlap with linear ramps, and the tiles
 * are cropped to the step and joined. The decoder's working memory is then that of one tile,
 * whatever the image size, at the price of small seams where the receptive field is cut. Encoding
 * (tiled_encode) tiles the pixels the same way and blends the posterior's moments. The blends run
 * on the device, in the tiles' dtype, in diffusers' order (its blends update tiles in place, so a
 * tile's right and bottom edges are blended again by its neighbours: tiledApply keeps the blended
 * tiles for them).
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { synchronize } from "../devices";
import type { AutoencoderKL } from "./autoencoder-kl";

export interface VaeTilingOptions {
  /** Tile side in pixels, a multiple of the VAE scale factor. Default: the VAE's sample_size (512 for SD 1.5, 1024 for SDXL). */
  tileSize?: number;
  /** Fraction of a tile shared with the next, in [0, 0.5]. Default 0.25. */
  overlap?: number;
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

/**
 * Decodes one latent [1, L, h, w] (already divided by the scaling factor, in the VAE's dtype and
 * device) tile by tile; returns the image [1, C, h·f, w·f] on the device, in the VAE's dtype
 * (the caller disposes it). Latents that fit one tile are decoded whole (as diffusers does).
 */
export async function tiledDecodeTensor(vae: AutoencoderKL, z: Tensor, opts: VaeTilingOptions = {}): Promise<Tensor> {
  if (z.ndim !== 4 || z.shape[0] !== 1) throw new RangeError(`tiledDecode: latents must be [1, L, h, w], got [${z.shape.join(",")}]`);
  const g = tileGeometry(vae, opts);
  const [, , h, w] = z.shape;
  return h <= g.tile && w <= g.tile ? vae.decode(z) : await tiledApply(z, g.tile, g.step, g.blend, g.keep, (part) => vae.decode(part));
}

/** tiledDecodeTensor's image as float32 on the host. */
export async function tiledDecode(vae: AutoencoderKL, z: Tensor, opts: VaeTilingOptions = {}): Promise<Float32Array> {
  const d = await tiledDecodeTensor(vae, z, opts);
  try {
    return await d.toFloat32Array();
  } finally {
    d.dispose();
  }
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
 * The tiling both directions share: `fn` on tiles of x [1, C, H, W] of side `tile` every `step`
 * (axes 2 and 3), each output tile blended into its upper and left neighbours over `blend` and
 * cropped to `keep`, the crops joined (a new tensor the caller owns). The device finishes each
 * tile before the next is queued, so the working memory is one tile's.
 */
async function tiledApply(x: Tensor, tile: number, step: number, blend: number, keep: number, fn: (part: Tensor) => Tensor): Promise<Tensor> {
  const [, , H, W] = x.shape;
  const rows: Tensor[][] = [];
  try {
    for (let i = 0; i < H; i += step) {
      const row: Tensor[] = [];
      rows.push(row);
      for (let j = 0; j < W; j += step) {
        row.push(tidy(() => fn(ops.contiguous(ops.slice(ops.slice(x, 2, i, Math.min(i + tile, H)), 3, j, Math.min(j + tile, W))))));
        await synchronize(x.device);
      }
    }
    return tidy(() => {
      const blended = rows.map((row) => [...row]);
      const joined = blended.map((row, i) => ops.concat(row.map((t, j) => {
        let b = t;
        if (i > 0) b = blendAxis(blended[i - 1][j], b, 2, blend);
        if (j > 0) b = blendAxis(row[j - 1], b, 3, blend);
        row[j] = b;  // later neighbours blend from the blended tile, as diffusers' in-place updates do
        return ops.slice(ops.slice(b, 2, 0, Math.min(b.shape[2], keep)), 3, 0, Math.min(b.shape[3], keep));
      }), 3));
      return joined.length === 1 ? ops.contiguous(joined[0]) : ops.concat(joined, 2);
    });
  } finally {
    for (const t of rows.flat()) t.dispose();
  }
}

/**
 * diffusers' AutoencoderKL.tiled_encode: pixels [1, 3, H, W] (the VAE's dtype and device) encoded
 * in overlapping tiles whose moments are blended and cropped as tiled_decode's pixels are; the
 * posterior's mean and (clamped) log-variance [1, L, H/f, W/f]. Images within one tile are
 * encoded whole.
 */
export async function tiledEncode(vae: AutoencoderKL, x: Tensor, opts: VaeTilingOptions = {}): Promise<{ mean: Tensor; logvar: Tensor }> {
  if (x.ndim !== 4 || x.shape[0] !== 1) throw new RangeError(`tiledEncode: pixels must be [1, C, H, W], got [${x.shape.join(",")}]`);
  const g = tileGeometry(vae, opts);
  const f = vae.config.scaleFactor, L = vae.config.latentChannels;
  const [, , H, W] = x.shape;
  const tile = g.tile * f, step = g.step * f;
  if (H <= tile && W <= tile) return vae.encode(x);
  const blend = Math.floor(g.tile * (opts.overlap ?? 0.25));
  // the moments (mean and log-variance) are blended together, as diffusers does
  const moments = await tiledApply(x, tile, step, blend, g.step, (part) => {
    const post = vae.encode(part);
    return ops.concat([post.mean, post.logvar], 1);
  });
  try {
    return tidy(() => ({ mean: ops.contiguous(ops.slice(moments, 1, 0, L)), logvar: ops.contiguous(ops.slice(moments, 1, L, 2 * L)) }));
  } finally {
    moments.dispose();
  }
}
