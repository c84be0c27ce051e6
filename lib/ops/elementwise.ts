// Elementwise arithmetic with numpy broadcasting, scalar forms, and the fused sampler update.
import { native, type BinaryOpName, type UnaryOpName } from "../native";
import { Tensor, arg, optArg, wrap } from "../tensor";

function binary(op: BinaryOpName, a: Tensor | number, b: Tensor | number): Tensor {
  if (a instanceof Tensor && b instanceof Tensor) return wrap(native().binary(op, arg(a, op, "a"), arg(b, op, "b")));
  if (a instanceof Tensor && typeof b === "number") return wrap(native().binaryScalar(op, arg(a, op, "a"), b, false));
  if (typeof a === "number" && b instanceof Tensor) return wrap(native().binaryScalar(op, arg(b, op, "b"), a, true));
  throw new TypeError(`${op}: at least one operand must be a Tensor (and the other a Tensor or number)`);
}

export const add = (a: Tensor | number, b: Tensor | number): Tensor => binary("add", a, b);
export const sub = (a: Tensor | number, b: Tensor | number): Tensor => binary("sub", a, b);
export const mul = (a: Tensor | number, b: Tensor | number): Tensor => binary("mul", a, b);
export const div = (a: Tensor | number, b: Tensor | number): Tensor => binary("div", a, b);
export const pow = (a: Tensor | number, b: Tensor | number): Tensor => binary("pow", a, b);
export const maximum = (a: Tensor | number, b: Tensor | number): Tensor => binary("maximum", a, b);
export const minimum = (a: Tensor | number, b: Tensor | number): Tensor => binary("minimum", a, b);

/** @internal */
export function unary(op: UnaryOpName, x: Tensor): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: input must be a Tensor`);
  return wrap(native().unary(op, arg(x, op, "x")));
}

export const neg = (x: Tensor): Tensor => unary("neg", x);
export const exp = (x: Tensor): Tensor => unary("exp", x);
export const log = (x: Tensor): Tensor => unary("log", x);
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
export const abs = (x: Tensor): Tensor => unary("abs", x);
export const square = (x: Tensor): Tensor => unary("square", x);
export const sin = (x: Tensor): Tensor => unary("sin", x);
export const cos = (x: Tensor): Tensor => unary("cos", x);
export const reciprocal = (x: Tensor): Tensor => unary("reciprocal", x);

export function clamp(x: Tensor, min: number, max: number): Tensor {
  return wrap(native().clamp(arg(x, "clamp", "x"), min, max));
}

/**
 * out = a*x + b*y + c*z in one pass (y and z optional): the per-step update of every sampler,
 * fused so a step reads each latent once.
 */
export function axpby(a: number, x: Tensor, b = 0, y?: Tensor, c = 0, z?: Tensor): Tensor {
  return wrap(native().axpby(arg(x, "axpby", "x"), a, optArg(y, "axpby", "y"), b, optArg(z, "axpby", "z"), c));
}
