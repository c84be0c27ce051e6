// Backward rules for the math entries (native/binding/ops_math.cc): binary (with numpy
// broadcasting), binaryScalar, unary, clamp, axpby, geglu, reduce, softmax. The derivative
// formulas live in native/cpu/elementwise_backward.cc; the rules pick the kernel and undo the
// broadcasting.
import type { BinaryOpName, NativeTensor, ReduceOpName, UnaryOpName } from "../native";
import { B, type Rule } from "./engine";

type H = NativeTensor;

/**
 * Sums g down to `shape` (the inverse of numpy broadcasting): leading dims and dims of size 1
 * in `shape` are reduced. Runs of adjacent reduced (or kept) dims are merged by a reshape, so
 * a bias [C] under [N,H,W,C] costs one reduction.
 */
export function sumTo(g: H, shape: readonly number[]): H {
  const gs = g.shape;
  if (gs.length === shape.length && gs.every((d, i) => d === shape[i])) return g;
  const lead = gs.length - shape.length;
  if (lead < 0) throw new Error(`autograd: cannot sum [${gs.join(",")}] to [${shape.join(",")}]`);
  const groups: { size: number; reduce: boolean }[] = [];
  gs.forEach((d, i) => {
    if (d === 1) return;
    const target = i < lead ? 1 : shape[i - lead];
    if (target !== d && target !== 1) throw new Error(`autograd: cannot sum [${gs.join(",")}] to [${shape.join(",")}]`);
    const reduce = target === 1;
    const last = groups[groups.length - 1];
    if (last && last.reduce === reduce) last.size *= d;
    else groups.push({ size: d, reduce });
  });
  let cur = B.reshape(g, groups.length ? groups.map((x) => x.size) : [1]);
  for (let i = groups.length - 1; i >= 0; i--) if (groups[i].reduce) cur = B.reduce("sum", cur, i, true);
  return B.reshape(cur, [...shape]);
}

const isTensorArg = (x: unknown): x is H => typeof x === "object" && x !== null;

export const mathRules: Record<string, Rule> = {
  // binary(op, a, b), broadcasting
  binary: {
    inputs: ([, a, b]) => [a, b],
    record: ({ args: [op, a, b], needs, save }) => {
      const as = [...(a as H).shape], bs = [...(b as H).shape];
      const o = op as BinaryOpName;
      if (o === "add" || o === "sub")
        return (g) => [
          needs[0] ? sumTo(g, as) : null,
          needs[1] ? (o === "add" ? sumTo(g, bs) : B.unary("neg", sumTo(g, bs))) : null,
        ];
      const sa = save(a), sb = save(b);
      return (g) => [
        needs[0] ? sumTo(B.binaryBackward(o, sa, sb, g, 0), as) : null,
        needs[1] ? sumTo(B.binaryBackward(o, sa, sb, g, 1), bs) : null,
      ];
    },
  },

  // binaryScalar(op, a, s, scalarFirst)
  binaryScalar: {
    inputs: ([, a]) => [a],
    record: ({ args: [op, a, s, first], save }) => {
      const o = op as BinaryOpName;
      if (o === "add") return (g) => [g];
      if (o === "sub") return (g) => [first ? B.unary("neg", g) : g];
      if (o === "mul") return (g) => [B.binaryScalar("mul", g, s as number, false)];
      const sa = save(a);
      return (g) => [B.binaryScalarBackward(o, sa, s as number, first as boolean, g)];
    },
  },

  // unary(op, x)
  unary: {
    inputs: ([, x]) => [x],
    record: ({ args: [op, x], save }) => {
      if (op === "neg") return (g) => [B.unary("neg", g)];
      const sx = save(x);
      return (g) => [B.unaryBackward(op as UnaryOpName, sx, g)];
    },
  },

  // clamp(x, min, max): gradient passes where min <= x <= max
  clamp: {
    inputs: ([x]) => [x],
    record: ({ args: [x, lo, hi], save }) => {
      const sx = save(x);
      return (g) => [B.clampBackward(sx, lo as number, hi as number, g)];
    },
  },

  // axpby(x, a, y, b, z, c) = a x + b y + c z
  axpby: {
    inputs: ([x, , y, , z]) => [x, isTensorArg(y) ? y : null, isTensorArg(z) ? z : null],
    record: ({ args: [, a, , b, , c], needs }) => {
      const scale = (g: H, s: number) => B.binaryScalar("mul", g, s, false);
      return (g) => [needs[0] ? scale(g, a as number) : null, needs[1] ? scale(g, b as number) : null,
        needs[2] ? scale(g, c as number) : null];
    },
  },

  // geglu(x [..., 2C]) = x[..., :C] * gelu(x[..., C:])
  geglu: {
    inputs: ([x]) => [x],
    record: ({ args: [x], save }) => {
      const sx = save(x);
      return (g) => [B.gegluBackward(sx, g)];
    },
  },

  // reduce(op, x, dim, keepdim): sum/mean broadcast g back; max sends it to the maxima
  reduce: {
    inputs: ([, x]) => [x],
    record: ({ args: [op, x, dim, keepdim], out, save }) => {
      const shape = [...(x as H).shape];
      const d = (dim as number) < 0 ? (dim as number) + shape.length : (dim as number);
      const keepShape = shape.map((s, i) => (i === d ? 1 : s));
      const o = op as ReduceOpName;
      if (o === "max") {
        const sx = save(x), so = save(out);
        return (g) => [B.maxBackward(sx, so, g, d)];
      }
      const n = shape[d];
      return (g) => {
        const gk = keepdim ? g : B.reshape(g, keepShape);
        const full = B.broadcastTo(gk, shape);
        return [o === "mean" ? B.binaryScalar("div", full, n, false) : full];
      };
    },
  },

  // softmax(x) over the last dim: dx = y (g - sum(g y))
  softmax: {
    inputs: ([x]) => [x],
    record: ({ out, save }) => {
      const sy = save(out);
      return (g) => [B.softmaxBackward(sy, g)];
    },
  },
};
