/**
 * Inpainting masks: loading (any image, or 8-bit grey pixels), fitting to the output size, and the
 * tensors diffusers' StableDiffusionInpaintPipeline (0.27.2) derives from them. White (>= 128 of
 * 255) means "repaint", black "keep".
 */
import { loadImage, resizeImage, centerCrop, type ImageInput, type RGBImage } from "./images";

/** 8-bit single-channel pixels, row-major. */
export interface GrayImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** A mask: what an image input takes (converted to grey), or { width, height, data } with one byte per pixel. */
export type MaskInput = ImageInput | GrayImage;

/** PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded. Grey RGB stays exact. */
export function rgbToGray(img: RGBImage): GrayImage {
  const n = img.width * img.height;
  const out = new Uint8Array(n);
  const d = img.data;
  for (let i = 0; i < n; i++) out[i] = (d[3 * i] * 19595 + d[3 * i + 1] * 38470 + d[3 * i + 2] * 7471 + 0x8000) >>> 16;
  return { width: img.width, height: img.height, data: out };
}

function grayToRgb(m: GrayImage): RGBImage {
  const data = new Uint8Array(m.width * m.height * 3);
  for (let i = 0; i < m.data.length; i++) data[3 * i] = data[3 * i + 1] = data[3 * i + 2] = m.data[i];
  return { width: m.width, height: m.height, data };
}

/** Loads a mask; one byte per pixel passes through, everything else goes through loadImage and luma. */
export async function loadMask(input: MaskInput, what = "mask"): Promise<GrayImage> {
  if (input && typeof input === "object" && !(input instanceof Uint8Array) && "data" in input) {
    const { width, height, data } = input;
    if (Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0 && data instanceof Uint8Array && data.length === width * height)
      return { width, height, data };
  }
  return rgbToGray(await loadImage(input as ImageInput, what));
}

/**
 * The mask at the output size: the same centre crop as the image when only rounding to the scale
 * factor (a mask of the image's own size), else resized (as diffusers resizes both to the output).
 */
export function fitMask(mask: GrayImage, image: { width: number; height: number }, width: number, height: number, cropped: boolean): GrayImage {
  if (mask.width === width && mask.height === height) return mask;
  const rgb = grayToRgb(mask);
  const sameAsImage = mask.width === image.width && mask.height === image.height;
  const fitted = cropped && sameAsImage ? centerCrop(rgb, width, height) : resizeImage(rgb, width, height);
  const out = new Uint8Array(width * height);
  for (let i = 0; i < out.length; i++) out[i] = fitted.data[3 * i];
  return { width, height, data: out };
}

/** diffusers' mask_condition [1,1,H,W]: 1 where byte/255 >= 0.5 (byte >= 128), else 0. */
export function maskCondition(mask: GrayImage): Float32Array {
  const out = new Float32Array(mask.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(mask.data[i] / 255) >= 0.5 ? 1 : 0;
  return out;
}

/** F.interpolate(mask, size=(h, w)) in 'nearest' mode: element (i, j) = pixel (floor(i·H/h), floor(j·W/w)). */
export function latentMask(cond: Float32Array, H: number, W: number, h: number, w: number): Float32Array {
  const out = new Float32Array(h * w);
  for (let i = 0; i < h; i++) {
    const y = Math.floor((i * H) / h);
    for (let j = 0; j < w; j++) out[i * w + j] = cond[y * W + Math.floor((j * W) / w)];
  }
  return out;
}

/** init · (mask < 0.5): the image in [-1, 1] NCHW with the repaint area set to 0. */
export function maskedImage(init: Float32Array, cond: Float32Array): Float32Array {
  const hw = cond.length;
  const out = new Float32Array(init.length);
  for (let i = 0; i < init.length; i++) out[i] = cond[i % hw] < 0.5 ? init[i] : 0;
  return out;
}

/**
 * Pastes the original pixels back outside the mask: out = (gen·m + orig·(255 − m)) / 255, rounded,
 * with the mask's own (unbinarised) bytes, so a soft mask edge blends.
 */
export function pasteUnmasked(generated: Uint8Array, original: RGBImage, mask: GrayImage): Uint8Array {
  const out = new Uint8Array(generated.length);
  for (let i = 0; i < mask.data.length; i++) {
    const m = mask.data[i];
    for (let c = 0; c < 3; c++) out[3 * i + c] = Math.round((generated[3 * i + c] * m + original.data[3 * i + c] * (255 - m)) / 255);
  }
  return out;
}
