// Elementwise arithmetic (broadcasting binary ops, scalar forms, unary math, clamp, axpby) against
// the float64 reference in test/helpers/naive.ts.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

type BinaryName = "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum";
const BINARY: BinaryName[] = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"];

/** Operands in each op's comfortable domain: positive bases for pow, divisors away from zero. */
function operands(op: BinaryName, sa: number[], sb: number[], seed: number): [R.ND, R.ND] {
  if (op === "pow") return [R.randu(sa, seed, 0.5, 2), R.randu(sb, seed + 1, -2, 2)];
  const a = R.randn(sa, seed, 2);
  if (op === "div") {
    const mag = R.randu(sb, seed + 1, 0.5, 2), sign = R.randu(sb, seed + 2, -1, 1);
    return [a, R.map(mag, (v, i) => (sign.data[i] < 0 ? -v : v))];
  }
  return [a, R.randn(sb, seed + 1, 2)];
}

const BROADCAST_CASES: [string, number[], number[]][] = [
  ["same shape, 1 element", [1], [1]],
  ["same shape, odd 1-D", [17], [17]],
  ["same shape, 3-D odd", [3, 7, 33], [3, 7, 33]],
  ["scalar-like [1] on the right", [5, 65], [1]],
  ["scalar-like [1] on the left", [1], [2, 3, 7]],
  ["bias [C]", [4, 9, 33], [33]],
  ["[N,1,C] against [N,L,C]", [2, 7, 17], [2, 1, 17]],
  ["rank-mismatched [3,1,5] x [4,1]", [3, 1, 5], [4, 1]],
  ["outer [7,1] x [1,65]", [7, 1], [1, 65]],
  ["middle dims [2,1,3,1] x [5,1,4]", [2, 1, 3, 1], [5, 1, 4]],
  ["multi-threaded flat (> one grain)", [131, 129], [131, 129]],
  ["multi-threaded broadcast rows", [129, 131], [129, 1]],
];

describe("binary ops with broadcasting", () => {
  for (const op of BINARY)
    test.each(BROADCAST_CASES)(`${op}: %s`, async (_name, sa, sb) => {
      const seed = 100 + BINARY.indexOf(op) * 37 + sa.length * 7 + sb.length;
      const [a, b] = operands(op, sa, sb, seed);
      const got = await evalOp(() => ops[op](tensorOf(a), tensorOf(b)));
      const want = R.binary(a, b, R.fn[op]);
      expect(got.shape).toEqual(want.shape);
      expectClose(got.data, want, { label: `${op} [${sa}] x [${sb}]` });
    });

  test("zero-size operands give a zero-size result", async () => {
    const got = await evalOp(() => ops.add(Tensor.zeros([0, 3]), Tensor.ones([3])));
    expect(got.shape).toEqual([0, 3]);
    expect(got.data.length).toBe(0);
  });

  test("maximum/minimum propagate NaN like torch", async () => {
    const a = R.nd([NaN, 1, -2, 3], [4]), b = R.nd([0, NaN, 5, -1], [4]);
    const mx = await evalOp(() => ops.maximum(tensorOf(a), tensorOf(b)));
    const mn = await evalOp(() => ops.minimum(tensorOf(a), tensorOf(b)));
    expectClose(mx.data, [NaN, NaN, 5, 3], { atol: 0, rtol: 0 });
    expectClose(mn.data, [NaN, NaN, -2, -1], { atol: 0, rtol: 0 });
  });
});

describe("binary ops on views", () => {
  test.each(BINARY)("%s: transposed view x contiguous", async (op) => {
    const [a, b] = operands(op, [7, 5], [5, 7], 300);
    const got = await evalOp(() => ops[op](tensorOf(a).transpose(0, 1), tensorOf(b)));
    expectClose(got.data, R.binary(R.transpose(a, 0, 1), b, R.fn[op]), { label: op });
  });

  test.each(BINARY)("%s: strided slice x bias, and a permuted 3-D view x [N,1,C]", async (op) => {
    const [a, b] = operands(op, [6, 40], [17], 310);
    const got = await evalOp(() => ops[op](ops.slice(tensorOf(a), 1, 3, 37, 2), tensorOf(b)));
    expectClose(got.data, R.binary(R.slice(a, 1, 3, 37, 2), b, R.fn[op]), { label: `${op} slice` });

    const [c, d] = operands(op, [5, 3, 9], [3, 1, 5], 320);  // c viewed as [3, 9, 5]
    const got2 = await evalOp(() => ops[op](tensorOf(c).permute([1, 2, 0]), tensorOf(d)));
    expectClose(got2.data, R.binary(R.permute(c, [1, 2, 0]), d, R.fn[op]), { label: `${op} permute` });
  });

  test("both operands are views (sliced rows of one tensor, transposed column block of another)", async () => {
    const a = R.randn([9, 12], 330), b = R.randn([12, 20], 331);
    const got = await evalOp(() => ops.mul(ops.slice(tensorOf(a), 0, 1, 8), ops.slice(tensorOf(b), 1, 4, 11).transpose(0, 1)));
    const want = R.binary(R.slice(a, 0, 1, 8), R.transpose(R.slice(b, 1, 4, 11), 0, 1), R.fn.mul);
    expectClose(got.data, want);
  });
});

describe("scalar operands", () => {
  test.each(BINARY)("%s: tensor op scalar and scalar op tensor", async (op) => {
    const x = op === "pow" ? R.randu([3, 33], 400, 0.5, 2) : op === "div" ? R.randu([3, 33], 400, 0.5, 3) : R.randn([3, 33], 400);
    const s = op === "pow" ? 1.7 : -0.625;
    const right = await evalOp(() => ops[op](tensorOf(x), s));
    expectClose(right.data, R.map(x, (v) => R.fn[op](v, s)), { label: `${op}(t, ${s})` });
    const base = op === "pow" ? 2.5 : s;
    const left = await evalOp(() => ops[op](base, tensorOf(x)));
    expectClose(left.data, R.map(x, (v) => R.fn[op](base, v)), { label: `${op}(${base}, t)` });
  });

  test("scalar ops on a non-contiguous view", async () => {
    const x = R.randn([8, 6], 410);
    const got = await evalOp(() => ops.sub(3, tensorOf(x).transpose(0, 1)));
    expectClose(got.data, R.map(R.transpose(x, 0, 1), (v) => 3 - v));
  });
});

type UnaryName = "neg" | "exp" | "log" | "sqrt" | "rsqrt" | "abs" | "square" | "sin" | "cos" | "reciprocal";
const UNARY: [UnaryName, (shape: number[], seed: number) => R.ND][] = [
  ["neg", (s, k) => R.randn(s, k, 3)],
  ["exp", (s, k) => R.randu(s, k, -20, 20)],
  ["log", (s, k) => R.randu(s, k, 1e-3, 50)],
  ["sqrt", (s, k) => R.randu(s, k, 0, 50)],
  ["rsqrt", (s, k) => R.randu(s, k, 1e-3, 50)],
  ["abs", (s, k) => R.randn(s, k, 3)],
  ["square", (s, k) => R.randn(s, k, 3)],
  ["sin", (s, k) => R.randu(s, k, -10, 10)],
  ["cos", (s, k) => R.randu(s, k, -10, 10)],
  ["reciprocal", (s, k) => R.map(R.randu(s, k, 0.05, 5), (v, i) => (i % 2 ? -v : v))],
];

describe("unary math", () => {
  test.each(UNARY)("%s on odd shapes", async (op, gen) => {
    for (const [i, shape] of [[1], [3, 7], [2, 17, 33], [65, 129]].entries()) {
      const x = gen(shape, 500 + i);
      const got = await evalOp(() => ops[op](tensorOf(x)));
      expect(got.shape).toEqual(shape);
      expectClose(got.data, R.map(x, R.fn[op]), { label: `${op} [${shape}]`, rtol: 2e-6, atol: 1e-6 });
    }
  });

  test.each(UNARY)("%s on a transposed view", async (op, gen) => {
    const x = gen([9, 13], 520);
    const got = await evalOp(() => ops[op](tensorOf(x).transpose(0, 1)));
    expectClose(got.data, R.map(R.transpose(x, 0, 1), R.fn[op]), { label: op, rtol: 2e-6, atol: 1e-6 });
  });

  test("edge values: log(0) = -inf, sqrt(-1) = NaN, reciprocal(0) = inf", async () => {
    const x = R.nd([0, -1, 0], [3]);
    expectClose((await evalOp(() => ops.log(tensorOf(x)))).data.slice(0, 1), [-Infinity]);
    expectClose((await evalOp(() => ops.sqrt(tensorOf(x)))).data.slice(1, 2), [NaN]);
    expectClose((await evalOp(() => ops.reciprocal(tensorOf(x)))).data.slice(2, 3), [Infinity]);
  });
});

describe("clamp", () => {
  test.each([[[1]], [[7, 33]], [[129, 257]]])("clamp [%j]", async (shape) => {
    const x = R.randn(shape, 600, 3);
    const got = await evalOp(() => ops.clamp(tensorOf(x), -1, 1.5));
    expectClose(got.data, R.clamp(x, -1, 1.5), { atol: 0, rtol: 0 });
  });
  test("min == max, and a strided view", async () => {
    const x = R.randn([6, 10], 601, 3);
    const same = await evalOp(() => ops.clamp(tensorOf(x), 0.25, 0.25));
    expectClose(same.data, R.map(x, () => 0.25), { atol: 0, rtol: 0 });
    const view = await evalOp(() => ops.clamp(ops.slice(tensorOf(x), 1, 0, 10, 3), -0.5, 0.5));
    expectClose(view.data, R.clamp(R.slice(x, 1, 0, 10, 3), -0.5, 0.5), { atol: 0, rtol: 0 });
  });
});

describe("axpby", () => {
  test.each([[[1]], [[17]], [[3, 65, 33]]])("one, two and three terms on [%j]", async (shape) => {
    const x = R.randn(shape, 700), y = R.randn(shape, 701), z = R.randn(shape, 702);
    const one = await evalOp(() => ops.axpby(0.75, tensorOf(x)));
    expectClose(one.data, R.axpby(0.75, x));
    const two = await evalOp(() => ops.axpby(1.25, tensorOf(x), -0.5, tensorOf(y)));
    expectClose(two.data, R.axpby(1.25, x, -0.5, y));
    const three = await evalOp(() => ops.axpby(0.9, tensorOf(x), 0.3, tensorOf(y), -2, tensorOf(z)));
    expectClose(three.data, R.axpby(0.9, x, 0.3, y, -2, z));
  });

  test("non-contiguous x, y and z", async () => {
    const x = R.randn([5, 8], 710), y = R.randn([5, 8], 711), z = R.randn([8, 5], 712);
    const got = await evalOp(() =>
      ops.axpby(2, ops.slice(tensorOf(x), 1, 0, 8, 2), -1, ops.slice(tensorOf(y), 1, 1, 8, 2),
        0.5, ops.slice(tensorOf(z), 0, 0, 8, 2).transpose(0, 1)));
    const want = R.axpby(2, R.slice(x, 1, 0, 8, 2), -1, R.slice(y, 1, 1, 8, 2), 0.5, R.transpose(R.slice(z, 0, 0, 8, 2), 0, 1));
    expectClose(got.data, want);
  });
});

describe("bad arguments", () => {
  const f = (shape: number[]) => Tensor.zeros(shape);
  const i32 = () => Tensor.fromArray(new Int32Array(3), [3]);

  test.each(BINARY)("%s: wrong dtype is a TypeError naming the op", (op) => {
    expectThrows(() => ops[op](i32(), f([3])), TypeError, new RegExp(`\\b${op}\\b`));
    expectThrows(() => ops[op](f([3]), i32()), TypeError, new RegExp(`\\b${op}\\b`));
    expectThrows(() => ops[op](i32(), 2), TypeError, new RegExp(`\\b${op}\\b`));
  });

  test.each(BINARY)("%s: shapes that do not broadcast are a RangeError naming the op", (op) => {
    expectThrows(() => ops[op](f([3]), f([4])), RangeError, new RegExp(`\\b${op}\\b.*broadcast`));
    expectThrows(() => ops[op](f([2, 3, 5]), f([3, 1, 5])), RangeError, new RegExp(`\\b${op}\\b`));
  });

  test.each(BINARY)("%s: disposed and non-Tensor operands are TypeErrors naming the op", (op) => {
    const d = f([3]);
    d.dispose();
    expectThrows(() => ops[op](d, f([3])), TypeError, new RegExp(`\\b${op}\\b.*disposed`));
    expectThrows(() => ops[op](f([3]), d), TypeError, new RegExp(`\\b${op}\\b.*disposed`));
    expectThrows(() => ops[op](d, 1), TypeError, new RegExp(`\\b${op}\\b.*disposed`));
    expectThrows(() => ops[op]("x" as unknown as Tensor, f([3])), TypeError, new RegExp(`\\b${op}\\b`));
    expectThrows(() => ops[op](1, 2), TypeError, new RegExp(`\\b${op}\\b`));
    expectThrows(() => ops[op]([1, 2, 3] as unknown as Tensor, 2), TypeError, new RegExp(`\\b${op}\\b`));
  });

  test.each(UNARY.map(([n]) => n))("%s: wrong dtype, disposed input and non-Tensor are TypeErrors", (op) => {
    expectThrows(() => ops[op](i32()), TypeError, new RegExp(`\\b${op}\\b.*float32`));
    expectThrows(() => ops[op](Tensor.zeros([3], { dtype: "float16" })), TypeError, new RegExp(`\\b${op}\\b`));
    const d = f([3]);
    d.dispose();
    expectThrows(() => ops[op](d), TypeError, new RegExp(`\\b${op}\\b.*disposed`));
    expectThrows(() => ops[op](new Float32Array(3) as unknown as Tensor), TypeError, new RegExp(`\\b${op}\\b`));
  });

  test("clamp: min > max is a RangeError, int input a TypeError, non-number bounds a TypeError", () => {
    expectThrows(() => ops.clamp(f([3]), 1, 0), RangeError, /clamp/);
    expectThrows(() => ops.clamp(i32(), 0, 1), TypeError, /clamp/);
    expectThrows(() => ops.clamp(f([3]), "0" as unknown as number, 1), TypeError, /clamp/);
  });

  test("axpby: mismatched shapes are a RangeError, z without y / wrong dtype / disposed a TypeError", () => {
    expectThrows(() => ops.axpby(1, f([3]), 1, f([4])), RangeError, /axpby/);
    expectThrows(() => ops.axpby(1, f([3, 1]), 1, f([3])), RangeError, /axpby/);
    expectThrows(() => ops.axpby(1, f([3]), 1, f([3]), 1, f([2])), RangeError, /axpby/);
    expectThrows(() => ops.axpby(1, f([3]), 0, undefined, 1, f([3])), TypeError, /axpby/);
    expectThrows(() => ops.axpby(1, i32()), TypeError, /axpby/);
    expectThrows(() => ops.axpby(1, f([3]), 1, i32()), TypeError, /axpby/);
    const d = f([3]);
    d.dispose();
    expectThrows(() => ops.axpby(1, f([3]), 1, d), TypeError, /axpby.*disposed/);
  });
});
