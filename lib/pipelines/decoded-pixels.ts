// The VAE's output -> diffusers' image arrays, computed by the tensor's own device (natively on the
// CPU, by kernels on a GPU): a per-pixel JavaScript loop cost ~25 ms per 512x512 image, more than
// the bfloat16 VAE decode itself on an H100.
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";

export interface DecodedPixels {
  /** The VAE's output as float32, NCHW. */
  decoded: Float32Array;
  /** clamp(decoded/2 + 0.5, 0, 1), NHWC (VaeImageProcessor.denormalize). NaN stays NaN, as torch's clamp. */
  imageFloat: Float32Array;
  /** Per image of the batch, RGB bytes: imageFloat·255 (float32) rounded half to even (numpy_to_pil); NaN -> 0. */
  rgb: Uint8Array[];
}

/** decoded [B,3,H,W] on any device in any float dtype (not disposed) -> the arrays above. */
export async function decodedPixels(decoded: Tensor): Promise<DecodedPixels> {
  const [B, C, H, W] = decoded.shape;
  if (decoded.ndim !== 4 || C !== 3) throw new RangeError(`decodedPixels: expected [B,3,H,W], got [${decoded.shape.join(",")}]`);
  // Each op rounds to float32 as the reference's float32 numpy steps do (x/2 is exact, then + 0.5).
  const [d32, image, scaled] = tidy(() => {
    const d32 = decoded.dtype === "float32" ? decoded : decoded.to(decoded.device, "float32");
    const image = ops.nchwToNhwc(ops.clamp(ops.add(ops.div(d32, 2), 0.5), 0, 1));
    return [d32, image, ops.mul(image, 255)];
  });
  try {
    const [d, imageFloat, s] = await Promise.all([d32.toFloat32Array(), image.toFloat32Array(), scaled.toFloat32Array()]);
    // Uint8ClampedArray's conversion rounds half to even and maps NaN to 0: numpy's uint8 cast here.
    const bytes = new Uint8ClampedArray(s.length);
    bytes.set(s);
    const plane = H * W * 3;
    const rgb = Array.from({ length: B }, (_, b) => new Uint8Array(bytes.buffer, b * plane, plane));
    return { decoded: d, imageFloat, rgb };
  } finally {
    if (d32 !== decoded) d32.dispose();
    image.dispose();
    scaled.dispose();
  }
}

/** decodedPixels over host data [B,3,H,W] (float32, NCHW), on the CPU. */
export async function decodedPixelsOf(data: Float32Array, shape: readonly number[]): Promise<DecodedPixels> {
  const t = Tensor.fromArray(data, [...shape]);
  try {
    return await decodedPixels(t);
  } finally {
    t.dispose();
  }
}
