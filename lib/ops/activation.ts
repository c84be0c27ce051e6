// Activations and softmax.
import { native } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";
import { unary } from "./elementwise";

export const silu = (x: Tensor): Tensor => unary("silu", x);
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
/** GELU; `approximate: "tanh"` is the tanh form, the default is the exact erf form. */
export function gelu(x: Tensor, opts: { approximate?: "none" | "tanh" } = {}): Tensor {
  const a = opts.approximate ?? "none";
  if (a !== "none" && a !== "tanh") throw new RangeError(`gelu: approximate must be "none" or "tanh", got "${a}"`);
  return unary(a === "tanh" ? "gelu_tanh" : "gelu", x);
}
/** x * sigmoid(1.702 x), CLIP's activation. */
export const quickGelu = (x: Tensor): Tensor => unary("quick_gelu", x);
/** [..., 2C] -> [..., C]: first half * gelu(second half), as diffusers' GEGLU. */
export const geglu = (x: Tensor): Tensor => wrap(native().geglu(arg(x, "geglu", "x")));

/** Softmax over `dim` (default the last; other dims go through a transpose). */
export function softmax(x: Tensor, dim = -1): Tensor {
  arg(x, "softmax", "x");
  const d = dim < 0 ? dim + x.ndim : dim;
  if (d < 0 || d >= x.ndim) throw new RangeError(`softmax: dim ${dim} out of range for ${x.ndim} dims`);
  if (d === x.ndim - 1) return wrap(native().softmax(arg(x, "softmax", "x")));
  const t = x.transpose(d, -1);
  try {
    const s = wrap(native().softmax(arg(t, "softmax", "t")));
    try { return s.transpose(d, -1).contiguous(); } finally { s.dispose(); }
  } finally {
    t.dispose();
  }
}
