// Shape manipulation: views where possible (reshape of contiguous data, permute, slice), copies
// otherwise (concat, contiguous).
import { native } from "../native";
import { Tensor, arg, wrap, type DType, type DeviceName } from "../tensor";

// Checks that x is a live Tensor before a method call, so errors name the op.
const live = (x: Tensor, op: string): Tensor => (arg(x, op, "x"), x);

export const reshape = (x: Tensor, shape: readonly number[]): Tensor => live(x, "reshape").reshape(shape);
export const permute = (x: Tensor, dims: readonly number[]): Tensor => live(x, "permute").permute(dims);
export const transpose = (x: Tensor, d0: number, d1: number): Tensor => live(x, "transpose").transpose(d0, d1);
export const contiguous = (x: Tensor): Tensor => live(x, "contiguous").contiguous();
export const cast = (x: Tensor, dtype: DType): Tensor => live(x, "cast").to(x.device, dtype);
export const toDevice = (x: Tensor, device: DeviceName): Tensor => live(x, "toDevice").to(device);

/** Elements [start, end) (step `step`) along `dim`: a view. Negative indices count from the end. */
export function slice(x: Tensor, dim: number, start: number, end?: number, step = 1): Tensor {
  arg(x, "slice", "x");
  const d = dim < 0 ? dim + x.ndim : dim;
  return wrap(native().slice(arg(x, "slice", "x"), dim, start, end ?? x.shape[d] ?? 0, step));
}

export function concat(xs: readonly Tensor[], dim = 0): Tensor {
  if (!Array.isArray(xs)) throw new TypeError("concat: expected an array of Tensors");
  return wrap(native().concat(xs.map((t, i) => arg(t, "concat", `tensors[${i}]`)), dim));
}

/** Splits `dim` into pieces of `size` (the last may be smaller), or of the listed sizes. Views. */
export function split(x: Tensor, sizes: number | readonly number[], dim = 0): Tensor[] {
  arg(x, "split", "x");
  const d = dim < 0 ? dim + x.ndim : dim;
  if (d < 0 || d >= x.ndim) throw new RangeError(`split: dim ${dim} out of range for ${x.ndim} dims`);
  const total = x.shape[d];
  let parts: number[];
  if (typeof sizes === "number") {
    if (!(sizes >= 1) || !Number.isInteger(sizes)) throw new RangeError(`split: size must be a positive integer, got ${sizes}`);
    parts = [];
    for (let s = 0; s < total; s += sizes) parts.push(Math.min(sizes, total - s));
  } else {
    parts = [...sizes];
    if (parts.reduce((a, b) => a + b, 0) !== total)
      throw new RangeError(`split: sizes [${parts.join(",")}] do not add up to ${total}`);
  }
  const out: Tensor[] = [];
  let start = 0;
  for (const p of parts) { out.push(slice(x, d, start, start + p)); start += p; }
  return out;
}

/** `chunks` nearly equal views along `dim` (as torch.chunk). */
export function chunk(x: Tensor, chunks: number, dim = 0): Tensor[] {
  arg(x, "chunk", "x");
  if (!(chunks >= 1) || !Number.isInteger(chunks)) throw new RangeError(`chunk: chunks must be a positive integer, got ${chunks}`);
  const d = dim < 0 ? dim + x.ndim : dim;
  return split(x, Math.ceil(x.shape[d] / chunks), dim);
}
