// Training data: image + caption datasets and the seeded order they are read in.
//
// A folder dataset is laid out as Hugging Face's ImageFolder: either `metadata.jsonl` with one
// {"file_name": ..., "text": ...} object per line, or images with a same-name `.txt` caption
// (`cat.png` + `cat.txt`). An image may have several captions (each non-empty line of its .txt,
// or a "text" array): each time it is read, one of them is drawn from (seed, epoch, k), so a model
// learns the phrasings rather than one exact string; the first is its main caption. PNG and JPEG are decoded by content; RGBA is composited over a
// background colour; every image is resized (shorter side to the training size, area-averaged
// when shrinking, bilinear when enlarging) and centre-cropped to a square, as
// train_text_to_image.py's Resize + CenterCrop. A file that cannot be read or decoded is skipped
// with a warning and counted; it never stops training.
//
// Order: each epoch is a permutation of the dataset drawn from (seed, epoch), and the random
// horizontal flip and the caption of the k-th sample of an epoch from (seed, epoch, k). The sampler's state is two
// integers, so a checkpoint can resume the exact sequence.
import * as fs from "fs";
import * as path from "path";
import { PNG } from "pngjs";
import * as jpeg from "jpeg-js";
import type { RGBImage } from "../pipelines/images";
import { Rng, mixSeed } from "./rng";

export type { RGBImage };

/** What the trainers read: square 8-bit RGB images at `resolution` and their captions. */
export interface TrainingDataset {
  readonly size: number;
  readonly resolution: number;
  /** The main (first) caption of item i. */
  caption(i: number): string;
  /** Every caption of item i, the main one first; training draws one per sample. */
  captions(i: number): readonly string[];
  image(i: number): RGBImage;
  /** Files that were skipped (unreadable, undecodable, missing). */
  readonly skipped: number;
  /** One line per skipped file or other problem. */
  readonly warnings: readonly string[];
}

/** An RGB colour: [r, g, b] bytes or "#rrggbb". */
export type Colour = readonly [number, number, number] | string;

export function parseColour(c: Colour, what = "background"): [number, number, number] {
  if (typeof c === "string") {
    const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(c.trim());
    if (!m) throw new RangeError(`${what} must be "#rrggbb" or [r, g, b], got ${JSON.stringify(c)}`);
    return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
  }
  if (!Array.isArray(c) || c.length !== 3 || c.some((v) => !Number.isInteger(v) || v < 0 || v > 255))
    throw new RangeError(`${what} must be "#rrggbb" or [r, g, b] bytes, got ${JSON.stringify(c)}`);
  return [c[0], c[1], c[2]];
}

// ---- decoding

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** 8-bit RGBA pixels. */
export interface RGBAImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Decodes PNG (any colour type / depth, scaled to 8 bits) or JPEG, by content, keeping alpha. */
export function decodeRGBA(buf: Uint8Array, what = "image"): RGBAImage {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length >= 8 && b.subarray(0, 8).equals(PNG_SIGNATURE)) {
    const png = PNG.sync.read(b);
    return { width: png.width, height: png.height, data: new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.byteLength) };
  }
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    const img = jpeg.decode(b, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
    return { width: img.width, height: img.height, data: img.data };
  }
  throw new TypeError(`${what}: not a PNG or JPEG file`);
}

/** RGBA over an opaque background: c·a + bg·(1 − a), as float RGB (0..255). */
export function compositeOver(img: RGBAImage, background: Colour = [255, 255, 255]): Float32Array {
  const bg = parseColour(background);
  const n = img.width * img.height;
  const out = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = img.data[4 * i + 3] / 255;
    for (let c = 0; c < 3; c++) out[3 * i + c] = img.data[4 * i + c] * a + bg[c] * (1 - a);
  }
  return out;
}

// ---- resampling (separable; float RGB, row-major HWC)

export type ResampleMethod = "area" | "bilinear";
export const RESAMPLE_METHODS: readonly ResampleMethod[] = ["area", "bilinear"];

interface Taps { first: number; w: Float64Array }

/**
 * Per output index: the input indices and weights. "area" shrinking averages the input interval
 * [o·s, (o+1)·s) with exact fractional coverage (a box filter); otherwise bilinear with pixel
 * centres at +0.5 (edge pixels clamped).
 */
function taps(inSize: number, outSize: number, method: ResampleMethod): Taps[] {
  const scale = inSize / outSize;
  const out: Taps[] = [];
  for (let o = 0; o < outSize; o++) {
    if (method === "area" && scale > 1) {
      const lo = o * scale, hi = (o + 1) * scale;
      const first = Math.floor(lo), last = Math.min(inSize - 1, Math.ceil(hi) - 1);
      const w = new Float64Array(last - first + 1);
      for (let i = first; i <= last; i++) w[i - first] = (Math.min(hi, i + 1) - Math.max(lo, i)) / scale;
      out.push({ first, w });
    } else {
      const x = Math.min(Math.max((o + 0.5) * scale - 0.5, 0), inSize - 1);
      const i0 = Math.floor(x), frac = x - i0;
      out.push(i0 + 1 < inSize && frac > 0 ? { first: i0, w: Float64Array.of(1 - frac, frac) } : { first: i0, w: Float64Array.of(1) });
    }
  }
  return out;
}

/** Resizes float RGB (HWC, 0..255) to outW x outH. */
export function resampleRGB(src: Float32Array, width: number, height: number, outW: number, outH: number, method: ResampleMethod = "area"): Float32Array {
  if (!RESAMPLE_METHODS.includes(method)) throw new RangeError(`resample must be one of ${RESAMPLE_METHODS.join(", ")}, got ${JSON.stringify(method)}`);
  if (outW === width && outH === height) return src;
  const tx = taps(width, outW, method), ty = taps(height, outH, method);
  const tmp = new Float32Array(outW * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < outW; x++) {
      const { first, w } = tx[x];
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < w.length; k++) {
        const p = (y * width + first + k) * 3;
        r += w[k] * src[p]; g += w[k] * src[p + 1]; b += w[k] * src[p + 2];
      }
      const q = (y * outW + x) * 3;
      tmp[q] = r; tmp[q + 1] = g; tmp[q + 2] = b;
    }
  const out = new Float32Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    const { first, w } = ty[y];
    for (let x = 0; x < outW; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < w.length; k++) {
        const p = ((first + k) * outW + x) * 3;
        r += w[k] * tmp[p]; g += w[k] * tmp[p + 1]; b += w[k] * tmp[p + 2];
      }
      const q = (y * outW + x) * 3;
      out[q] = r; out[q + 1] = g; out[q + 2] = b;
    }
  }
  return out;
}

export interface PrepareOptions {
  background?: Colour;
  resample?: ResampleMethod;
}

/**
 * Decoded RGBA -> square RGB at `resolution`: composite over the background, scale so the shorter
 * side is `resolution` (rounded as torchvision's Resize: the longer side is floor(long·res/short)),
 * centre-crop.
 */
export function prepareImage(img: RGBAImage, resolution: number, opts: PrepareOptions = {}): RGBImage {
  const rgb = compositeOver(img, opts.background ?? [255, 255, 255]);
  const { width: W, height: H } = img;
  const s = Math.min(W, H);
  const newW = W === s ? resolution : Math.max(resolution, Math.floor((W * resolution) / s));
  const newH = H === s ? resolution : Math.max(resolution, Math.floor((H * resolution) / s));
  const scaled = resampleRGB(rgb, W, H, newW, newH, opts.resample ?? "area");
  // torchvision CenterCrop: top = round((h - size) / 2)
  const x0 = Math.round((newW - resolution) / 2), y0 = Math.round((newH - resolution) / 2);
  const out = new Uint8Array(resolution * resolution * 3);
  for (let y = 0; y < resolution; y++)
    for (let x = 0; x < resolution; x++)
      for (let c = 0; c < 3; c++) {
        const v = scaled[((y0 + y) * newW + x0 + x) * 3 + c];
        out[(y * resolution + x) * 3 + c] = Math.min(255, Math.max(0, Math.round(v)));
      }
  return { width: resolution, height: resolution, data: out };
}

/**
 * Images as the networks take them: float32 NCHW [B,3,R,R] values 2·(u8/255) − 1, each
 * mirrored left-right where `flips[i]` is set.
 */
export function imagesToNchw(images: readonly RGBImage[], flips?: readonly boolean[]): Float32Array {
  if (images.length === 0) throw new RangeError("imagesToNchw: no images");
  const { width: W, height: H } = images[0];
  const plane = W * H;
  const out = new Float32Array(images.length * 3 * plane);
  const f = Math.fround;
  images.forEach((img, b) => {
    if (img.width !== W || img.height !== H) throw new RangeError(`imagesToNchw: image ${b} is ${img.width}x${img.height}, expected ${W}x${H}`);
    const flip = flips?.[b] ?? false;
    const base = b * 3 * plane;
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const sx = flip ? W - 1 - x : x;
        const p = (y * W + sx) * 3;
        for (let c = 0; c < 3; c++) out[base + c * plane + y * W + x] = f(f(2 * f(img.data[p + c] / 255)) - 1);
      }
  });
  return out;
}

// ---- folder datasets

const IMAGE_EXT = /\.(png|jpe?g)$/i;

export interface ImageFolderOptions extends PrepareOptions {
  /** Side of the square training images (default 64). */
  resolution?: number;
  /** The caption key of metadata.jsonl rows (default "text"). */
  captionColumn?: string;
  /** Receives each warning (default: console.warn). */
  onWarn?: (message: string) => void;
}

/** An in-memory dataset (the shapes set, tests, or a folder after loading). */
export class InMemoryDataset implements TrainingDataset {
  readonly resolution: number;
  private readonly images: RGBImage[];
  private readonly texts: (readonly string[])[];
  /** `caption`: one caption, or several (the main one first). */
  constructor(items: readonly { image: RGBImage; caption: string | readonly string[] }[], resolution: number, readonly skipped = 0, readonly warnings: readonly string[] = []) {
    if (items.length === 0) throw new RangeError("dataset: no usable images");
    this.resolution = resolution;
    this.images = items.map((it, i) => {
      if (it.image.width !== resolution || it.image.height !== resolution)
        throw new RangeError(`dataset: image ${i} is ${it.image.width}x${it.image.height}, expected ${resolution}x${resolution}`);
      return it.image;
    });
    this.texts = items.map((it, i) => {
      const c = typeof it.caption === "string" ? [it.caption] : [...it.caption];
      if (c.length === 0 || c.some((x) => typeof x !== "string")) throw new TypeError(`dataset: item ${i} needs a caption string or a non-empty array of strings`);
      return c;
    });
  }
  get size(): number { return this.images.length; }
  caption(i: number): string { return this.texts[this.check(i)][0]; }
  captions(i: number): readonly string[] { return this.texts[this.check(i)]; }
  image(i: number): RGBImage { return this.images[this.check(i)]; }
  private check(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.images.length) throw new RangeError(`dataset: index ${i} out of range [0, ${this.images.length})`);
    return i;
  }
}

function listImages(root: string, dir = root, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (e.name.startsWith(".")) continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) listImages(root, full, out);
    else if (IMAGE_EXT.test(e.name)) out.push(path.relative(root, full));
  }
  return out;
}

/** The (file, caption) list of a folder: metadata.jsonl when present, else images + .txt files. */
function folderEntries(dir: string, captionColumn: string, warn: (m: string) => void): { entries: { file: string; caption: string[] }[]; bad: number } {
  const meta = path.join(dir, "metadata.jsonl");
  const entries: { file: string; caption: string[] }[] = [];
  let bad = 0;
  if (fs.existsSync(meta)) {
    const lines = fs.readFileSync(meta, "utf8").split(/\r?\n/);
    lines.forEach((line, i) => {
      if (line.trim() === "") return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch (e) {
        bad++;
        warn(`metadata.jsonl line ${i + 1}: not valid JSON (${(e as Error).message}); skipped`);
        return;
      }
      const r = row as Record<string, unknown>;
      if (!r || typeof r !== "object" || typeof r["file_name"] !== "string") {
        bad++;
        warn(`metadata.jsonl line ${i + 1}: no "file_name" string; skipped`);
        return;
      }
      const cap = r[captionColumn];
      const ok = cap === undefined || typeof cap === "string" || (Array.isArray(cap) && cap.length > 0 && cap.every((c) => typeof c === "string"));
      if (!ok) {
        bad++;
        warn(`metadata.jsonl line ${i + 1}: "${captionColumn}" is not a string or a non-empty array of strings; skipped`);
        return;
      }
      entries.push({ file: r["file_name"] as string, caption: cap === undefined ? [""] : typeof cap === "string" ? [cap] : cap });
    });
    return { entries, bad };
  }
  for (const rel of listImages(dir)) {
    const txt = path.join(dir, rel.replace(IMAGE_EXT, ".txt"));
    let caption = [""];
    if (fs.existsSync(txt)) {
      const lines = fs.readFileSync(txt, "utf8").split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
      if (lines.length > 0) caption = lines;
    } else warn(`${rel}: no caption file ${path.basename(txt)}; trained with the empty caption`);
    entries.push({ file: rel, caption });
  }
  return { entries, bad };
}

/**
 * Loads a folder dataset (see the top of this file): every image is decoded and prepared once
 * and held in memory as 8-bit RGB at `resolution` (resolution² · 3 bytes each).
 */
export async function openImageFolder(dir: string, opts: ImageFolderOptions = {}): Promise<InMemoryDataset> {
  const root = path.resolve(dir);
  if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new Error(`dataset: ${root} is not a directory`);
  const resolution = opts.resolution ?? 64;
  checkResolution(resolution);
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    (opts.onWarn ?? ((x: string) => console.warn(`diffusekit: ${x}`)))(m);
  };
  const { entries, bad } = folderEntries(root, opts.captionColumn ?? "text", warn);
  let skipped = bad;
  const items: { image: RGBImage; caption: string[] }[] = [];
  for (const [k, e] of entries.entries()) {
    const file = path.resolve(root, e.file);
    if (!file.startsWith(root + path.sep)) {
      skipped++;
      warn(`${e.file}: outside the dataset folder; skipped`);
      continue;
    }
    try {
      const bytes = await fs.promises.readFile(file);
      items.push({ image: prepareImage(decodeRGBA(bytes, e.file), resolution, opts), caption: e.caption });
    } catch (err) {
      skipped++;
      warn(`${e.file}: cannot be read as an image (${(err as Error).message.split("\n")[0]}); skipped`);
    }
    if (k % 64 === 63) await new Promise<void>((r) => setImmediate(r));
  }
  if (items.length === 0) throw new Error(`dataset: no usable images in ${root} (${skipped} skipped)`);
  return new InMemoryDataset(items, resolution, skipped, warnings);
}

export function checkResolution(resolution: number): void {
  if (!Number.isInteger(resolution) || resolution < 1 || resolution > 4096)
    throw new RangeError(`resolution must be an integer in [1, 4096], got ${resolution}`);
}

// ---- order

export interface SamplerState {
  epoch: number;
  /** Position inside the epoch's permutation. */
  pos: number;
}

export interface SampleRef {
  index: number;
  flip: boolean;
  /** A 32-bit hash of (seed, epoch, k) that picks this sample's caption among the image's captions. */
  draw: number;
}

/** The caption a sample trains on: its image's only caption, or the one its draw picks. */
export function sampleCaption(ds: TrainingDataset, ref: SampleRef): string {
  const c = ds.captions(ref.index);
  return c.length === 1 ? c[0] : c[ref.draw % c.length];
}

/** Epoch-based seeded permutations (Fisher-Yates) with per-sample flip draws. */
export class EpochSampler {
  private perm: Uint32Array | null = null;
  private permEpoch = -1;
  epoch = 0;
  pos = 0;

  constructor(readonly size: number, readonly seed: number, readonly randomFlip: boolean) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`EpochSampler: size must be a positive integer, got ${size}`);
  }

  /** The permutation of `epoch`. */
  permutation(epoch: number): Uint32Array {
    if (this.permEpoch === epoch && this.perm) return this.perm;
    const rng = new Rng(this.seed, "order", epoch);
    const p = new Uint32Array(this.size);
    for (let i = 0; i < p.length; i++) p[i] = i;
    for (let i = p.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      const t = p[i]; p[i] = p[j]; p[j] = t;
    }
    this.perm = p;
    this.permEpoch = epoch;
    return p;
  }

  next(): SampleRef {
    if (this.pos >= this.size) { this.epoch++; this.pos = 0; }
    const index = this.permutation(this.epoch)[this.pos];
    const flip = this.randomFlip && (mixSeed(this.seed, "flip", this.epoch, this.pos) & 1) === 1;
    const draw = mixSeed(this.seed, "caption", this.epoch, this.pos);
    this.pos++;
    return { index, flip, draw };
  }

  take(n: number): SampleRef[] {
    return Array.from({ length: n }, () => this.next());
  }

  state(): SamplerState {
    return { epoch: this.epoch, pos: this.pos };
  }

  load(s: SamplerState): void {
    if (!s || !Number.isInteger(s.epoch) || !Number.isInteger(s.pos) || s.epoch < 0 || s.pos < 0 || s.pos > this.size)
      throw new RangeError(`EpochSampler: bad state ${JSON.stringify(s)} for ${this.size} samples`);
    this.epoch = s.epoch;
    this.pos = s.pos;
  }
}
