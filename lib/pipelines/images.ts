/**
 * Images at the pipeline's edges: the RGB results of generate() (PNG with the generation
 * parameters in a "parameters" text chunk, the form AUTOMATIC1111's web UI writes and most image
 * tools read), decoding PNG/JPEG inputs for img2img, resizing/cropping them, the float -> uint8
 * conversion diffusers applies, and the cheap latent -> RGB preview.
 */
import * as fs from "fs";
import { PNG } from "pngjs";
import * as jpeg from "jpeg-js";

/** 8-bit RGB pixels, row-major, 3 bytes per pixel. */
export interface RGBImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** What produced an image; written into its PNG as A1111-style "parameters" text. */
export interface ImageParameters {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  /** The sampler's display name (e.g. "DPM++ 2M Karras"). */
  sampler: string;
  cfg: number;
  seed: number;
  width: number;
  height: number;
  model?: string;
  /** Further "Key: value" pairs (img2img's "Denoising strength", "Clip skip", ...). */
  extra?: Record<string, string | number>;
}

/** A1111's layout: prompt line(s), "Negative prompt: ...", then one line of "Key: value" pairs. */
export function formatParameters(p: ImageParameters): string {
  const pairs: [string, string | number][] = [
    ["Steps", p.steps], ["Sampler", p.sampler], ["CFG scale", p.cfg], ["Seed", p.seed], ["Size", `${p.width}x${p.height}`],
  ];
  if (p.model) pairs.push(["Model", p.model]);
  for (const [k, v] of Object.entries(p.extra ?? {})) pairs.push([k, v]);
  // A value holding ", " or ": " would break the key/value line; A1111 quotes such values.
  const value = (v: string | number) => (typeof v === "string" && /[,:\n"]/.test(v) ? JSON.stringify(v) : String(v));
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(pairs.map(([k, v]) => `${k}: ${value(v)}`).join(", "));
  return lines.join("\n");
}

// ---- PNG text chunks

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, body: Buffer): Buffer {
  const out = Buffer.alloc(12 + body.length);
  out.writeUInt32BE(body.length, 0);
  out.write(type, 4, "latin1");
  body.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + body.length)), 8 + body.length);
  return out;
}

/** tEXt when the text is Latin-1 (as PIL writes it), else iTXt with UTF-8 text. */
function textChunk(keyword: string, text: string): Buffer {
  if (/^[\u0000-\u00ff]*$/.test(text)) return chunk("tEXt", Buffer.concat([Buffer.from(keyword, "latin1"), Buffer.from([0]), Buffer.from(text, "latin1")]));
  // keyword \0, compression flag 0, method 0, empty language tag \0, empty translated keyword \0, text
  return chunk("iTXt", Buffer.concat([Buffer.from(keyword, "latin1"), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, "utf8")]));
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Encodes 8-bit RGB as PNG, with text chunks inserted right after IHDR. */
export function encodePNG(img: RGBImage, text: Record<string, string> = {}): Buffer {
  const png = new PNG({ width: img.width, height: img.height, colorType: 2, inputColorType: 2, inputHasAlpha: false });
  png.data = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  const raw = PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false });
  const ihdrEnd = 8 + 12 + raw.readUInt32BE(8);
  const chunks = Object.entries(text).map(([k, v]) => textChunk(k, v));
  return Buffer.concat([raw.subarray(0, ihdrEnd), ...chunks, raw.subarray(ihdrEnd)]);
}

/** The tEXt / iTXt (uncompressed) / zTXt-less text entries of a PNG file, by keyword. */
export function readPNGText(buf: Buffer): Record<string, string> {
  if (buf.length < 8 || !buf.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error("readPNGText: not a PNG file");
  const out: Record<string, string> = {};
  let at = 8;
  while (at + 12 <= buf.length) {
    const len = buf.readUInt32BE(at);
    const type = buf.toString("latin1", at + 4, at + 8);
    const body = buf.subarray(at + 8, Math.min(buf.length, at + 8 + len));
    if (type === "tEXt") {
      const z = body.indexOf(0);
      if (z > 0) out[body.toString("latin1", 0, z)] = body.toString("latin1", z + 1);
    } else if (type === "iTXt") {
      const z = body.indexOf(0);
      if (z > 0 && body[z + 1] === 0) {
        const lang = body.indexOf(0, z + 3);
        const trans = lang < 0 ? -1 : body.indexOf(0, lang + 1);
        if (trans >= 0) out[body.toString("latin1", 0, z)] = body.toString("utf8", trans + 1);
      }
    } else if (type === "IEND") {
      break;
    }
    at += 12 + len;
  }
  return out;
}

/** A result of generate(): 8-bit RGB pixels and the parameters that made them. */
export class GeneratedImage implements RGBImage {
  constructor(
    readonly width: number,
    readonly height: number,
    /** RGB, row-major, width·height·3 bytes. */
    readonly data: Uint8Array,
    readonly parameters?: ImageParameters,
  ) {
    if (data.length !== width * height * 3)
      throw new RangeError(`GeneratedImage: ${width}x${height} RGB needs ${width * height * 3} bytes, got ${data.length}`);
  }

  /** The A1111-style parameters text ("" when the image has no parameters). */
  get parametersText(): string {
    return this.parameters ? formatParameters(this.parameters) : "";
  }

  /** PNG bytes, with a "parameters" text chunk when the image has parameters. */
  toPNG(): Buffer {
    return encodePNG(this, this.parameters ? { parameters: this.parametersText } : {});
  }

  async savePNG(path: string): Promise<void> {
    await fs.promises.writeFile(path, this.toPNG());
  }
}

// ---- decoding inputs

/** An init image: a PNG/JPEG file path, its bytes, or RGB pixels. */
export type ImageInput = string | Buffer | Uint8Array | RGBImage;

/** Decodes a PNG or JPEG (by content) to 8-bit RGB; alpha is dropped as PIL's convert("RGB") does. */
export function decodeImageBytes(buf: Uint8Array, what = "image"): RGBImage {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length >= 8 && b.subarray(0, 8).equals(PNG_SIGNATURE)) {
    const png = PNG.sync.read(b);
    const n = png.width * png.height;
    const rgb = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) {
      rgb[3 * i] = png.data[4 * i];
      rgb[3 * i + 1] = png.data[4 * i + 1];
      rgb[3 * i + 2] = png.data[4 * i + 2];
    }
    return { width: png.width, height: png.height, data: rgb };
  }
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    const img = jpeg.decode(b, { useTArray: true, formatAsRGBA: false });
    return { width: img.width, height: img.height, data: img.data };
  }
  throw new TypeError(`${what}: not a PNG or JPEG file (only those two formats are decoded)`);
}

/** Any ImageInput as RGB pixels (a copy is not made for RGBImage inputs). */
export async function loadImage(input: ImageInput, what = "image"): Promise<RGBImage> {
  if (typeof input === "string") return decodeImageBytes(await fs.promises.readFile(input), `${what} ${input}`);
  if (input instanceof Uint8Array) return decodeImageBytes(input, what);
  if (input && typeof input === "object" && "data" in input) {
    const { width, height, data } = input;
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
      throw new RangeError(`${what}: width and height must be positive integers, got ${width}x${height}`);
    if (!(data instanceof Uint8Array) || data.length !== width * height * 3)
      throw new RangeError(`${what}: data must be a Uint8Array of width·height·3 = ${width * height * 3} RGB bytes`);
    return input;
  }
  throw new TypeError(`${what}: expected a PNG/JPEG path, a Buffer, or { width, height, data } RGB pixels`);
}

/** The centred width x height window of an image (no resampling). */
export function centerCrop(img: RGBImage, width: number, height: number): RGBImage {
  if (width === img.width && height === img.height) return img;
  if (width > img.width || height > img.height) throw new RangeError(`centerCrop: ${width}x${height} is larger than ${img.width}x${img.height}`);
  const x0 = (img.width - width) >> 1, y0 = (img.height - height) >> 1;
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const src = ((y0 + y) * img.width + x0) * 3;
    out.set(img.data.subarray(src, src + width * 3), y * width * 3);
  }
  return { width, height, data: out };
}

/**
 * Resizes to width x height (the aspect ratio may change, as diffusers' default resize does).
 * Separable triangle filter widened by the scale when shrinking (area-like, no aliasing);
 * bilinear when enlarging. Pixel centres are aligned as in PIL.
 */
export function resizeImage(img: RGBImage, width: number, height: number): RGBImage {
  if (width === img.width && height === img.height) return img;
  const weights = (inSize: number, outSize: number) => {
    const scale = inSize / outSize, support = Math.max(1, scale);
    const taps: { first: number; w: Float64Array }[] = [];
    for (let o = 0; o < outSize; o++) {
      const centre = (o + 0.5) * scale;
      const first = Math.max(0, Math.floor(centre - support)), last = Math.min(inSize - 1, Math.ceil(centre + support));
      const w = new Float64Array(last - first + 1);
      let sum = 0;
      for (let i = first; i <= last; i++) {
        const v = Math.max(0, 1 - Math.abs((i + 0.5 - centre) / support));
        w[i - first] = v;
        sum += v;
      }
      for (let i = 0; i < w.length; i++) w[i] /= sum || 1;
      taps.push({ first, w });
    }
    return taps;
  };
  const wx = weights(img.width, width), wy = weights(img.height, height);
  const tmp = new Float64Array(width * img.height * 3);  // horizontal pass
  for (let y = 0; y < img.height; y++)
    for (let x = 0; x < width; x++) {
      const { first, w } = wx[x];
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let k = 0; k < w.length; k++) s += w[k] * img.data[(y * img.width + first + k) * 3 + c];
        tmp[(y * width + x) * 3 + c] = s;
      }
    }
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const { first, w } = wy[y];
    for (let x = 0; x < width; x++)
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let k = 0; k < w.length; k++) s += w[k] * tmp[((first + k) * width + x) * 3 + c];
        out[(y * width + x) * 3 + c] = Math.min(255, Math.max(0, Math.round(s)));
      }
  }
  return { width, height, data: out };
}

/** diffusers' VaeImageProcessor.preprocess: NCHW float32 [1,3,H,W] = 2·(u8/255) − 1, in float32 steps. */
export function imageToNchw(img: RGBImage): Float32Array {
  const { width: W, height: H, data } = img;
  const out = new Float32Array(3 * H * W);
  const f = Math.fround;
  for (let i = 0; i < H * W; i++)
    for (let c = 0; c < 3; c++) out[c * H * W + i] = f(f(2 * f(data[3 * i + c] / 255)) - 1);
  return out;
}

// ---- latent preview

/**
 * Linear latent -> RGB factors for the SD 1.x/2.x VAE (the approximation ComfyUI and A1111 use for
 * live previews): rgb = latents^T · F per latent pixel, nominally in [-1, 1].
 */
const SD_LATENT_RGB: readonly (readonly number[])[] = [
  [0.3512, 0.2297, 0.3227],
  [0.3250, 0.4974, 0.2350],
  [-0.2829, 0.1762, 0.2721],
  [-0.2120, -0.2616, -0.7177],
];

/**
 * A cheap preview of latents [B,4,h,w] (NCHW, already divided by nothing: the raw loop latents):
 * one image per batch item at latent resolution, from a fixed linear map (no VAE run).
 */
export function latentPreviews(latents: Float32Array, shape: readonly number[]): GeneratedImage[] {
  const [B, C, h, w] = shape;
  const plane = h * w;
  const out: GeneratedImage[] = [];
  for (let b = 0; b < B; b++) {
    const data = new Uint8Array(plane * 3);
    for (let i = 0; i < plane; i++)
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let k = 0; k < Math.min(C, 4); k++) s += latents[(b * C + k) * plane + i] * SD_LATENT_RGB[k][c];
        data[i * 3 + c] = Math.min(255, Math.max(0, Math.round((s + 1) * 127.5)));
      }
    out.push(new GeneratedImage(w, h, data));
  }
  return out;
}
