// Activations (silu, sigmoid, tanh, gelu erf/tanh, quickGelu, geglu) and softmax over any dim.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

const SHAPES = [[1], [7], [3, 33], [2, 5, 65], [40, 129]];

/** [name, op, reference, what its error messages must mention] */
const ACTIVATIONS: [string, (x: Tensor) => Tensor, (v: number) => number, RegExp][] = [
  ["silu", ops.silu, R.fn.silu, /silu/],
  ["sigmoid", ops.sigmoid, R.fn.sigmoid, /sigmoid/],
  ["tanh", ops.tanh, R.fn.tanh, /tanh/],
  ["gelu (erf)", (x) => ops.gelu(x), R.fn.gelu, /gelu/],
  ["gelu approximate none", (x) => ops.gelu(x, { approximate: "none" }), R.fn.gelu, /gelu/],
  ["gelu (tanh)", (x) => ops.gelu(x, { approximate: "tanh" }), R.fn.geluTanh, /gelu/],
  ["quickGelu", ops.quickGelu, R.fn.quickGelu, /quick_?[gG]elu/],
];

describe("activations", () => {
  test.each(ACTIVATIONS)("%s on odd shapes, including the saturated tails", async (name, op, ref) => {
    for (const [i, shape] of SHAPES.entries()) {
      const x = R.randn(shape, 1000 + i, 4);
      const got = await evalOp(() => op(tensorOf(x)));
      expect(got.shape).toEqual(shape);
      expectClose(got.data, R.map(x, ref), { label: `${name} [${shape}]`, atol: 1e-6, rtol: 1e-5 });
    }
    // far tails: no NaN/inf from exp overflow
    const tails = R.nd([-100, -30, -12, 12, 30, 100, 0], [7]);
    const got = await evalOp(() => op(tensorOf(tails)));
    expectClose(got.data, R.map(tails, ref), { label: `${name} tails`, atol: 1e-6, rtol: 1e-5 });
  });

  test.each(ACTIVATIONS)("%s on a transposed view", async (name, op, ref) => {
    const x = R.randn([11, 6], 1010, 3);
    const got = await evalOp(() => op(tensorOf(x).transpose(0, 1)));
    expectClose(got.data, R.map(R.transpose(x, 0, 1), ref), { label: name, atol: 1e-6 });
  });

  test("gelu erf and tanh forms differ (the option is honoured)", async () => {
    const x = R.nd([-2, -1, 1, 2], [4]);
    const a = await evalOp(() => ops.gelu(tensorOf(x)));
    const b = await evalOp(() => ops.gelu(tensorOf(x), { approximate: "tanh" }));
    expect(Math.max(...a.data.map((v, i) => Math.abs(v - b.data[i])))).toBeGreaterThan(1e-4);
  });
});

describe("geglu", () => {
  test.each([[[2]], [[1, 2]], [[3, 34]], [[2, 7, 66]], [[4, 9, 2 * 129]]])("[%j]", async (shape) => {
    const x = R.randn(shape, 1100 + shape.length, 2);
    const got = await evalOp(() => ops.geglu(tensorOf(x)));
    const want = R.geglu(x);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, { atol: 1e-6 });
  });

  test("on a sliced view (rows with a stride)", async () => {
    const x = R.randn([6, 20], 1110);
    const got = await evalOp(() => ops.geglu(ops.slice(tensorOf(x), 1, 2, 18)));
    expectClose(got.data, R.geglu(R.slice(x, 1, 2, 18)), { atol: 1e-6 });
  });

  test("odd last dim is a RangeError, int input and non-Tensor TypeErrors", () => {
    expectThrows(() => ops.geglu(Tensor.zeros([3, 5])), RangeError, /geglu.*even/);
    expectThrows(() => ops.geglu(Tensor.fromArray(new Int32Array(4), [2, 2])), TypeError, /geglu/);
    expectThrows(() => ops.geglu({} as Tensor), TypeError, /geglu/);
  });
});

describe("softmax", () => {
  const CASES: [number[], number][] = [
    [[1], -1],
    [[7], 0],
    [[3, 33], -1],
    [[3, 33], 0],
    [[2, 5, 65], 1],
    [[2, 5, 65], -1],
    [[4, 3, 7, 9], 2],
    [[16, 1025], -1],
  ];
  test.each(CASES)("[%j] over dim %d", async (shape, dim) => {
    const x = R.randn(shape, 1200 + shape.length * 10 + dim, 3);
    const got = await evalOp(() => ops.softmax(tensorOf(x), dim));
    expect(got.shape).toEqual(shape);
    expectClose(got.data, R.softmax(x, dim), { atol: 1e-7, rtol: 1e-5, label: `dim ${dim}` });
  });

  test("large logits do not overflow (max-subtracted), -inf entries get zero weight", async () => {
    const x = R.nd([1000, 999, 998, -1000, 88.8, 89, -Infinity, 0], [2, 4]);
    const got = await evalOp(() => ops.softmax(tensorOf(x)));
    expectClose(got.data, R.softmax(x), { atol: 1e-7, rtol: 1e-5 });
  });

  test("default dim is the last; transposed input", async () => {
    const x = R.randn([9, 5], 1210);
    const got = await evalOp(() => ops.softmax(tensorOf(x).transpose(0, 1)));
    expectClose(got.data, R.softmax(R.transpose(x, 0, 1), -1), { atol: 1e-7 });
  });

  test("bad dim is a RangeError, int input a TypeError", () => {
    expectThrows(() => ops.softmax(Tensor.zeros([2, 3]), 2), RangeError, /softmax.*dim/);
    expectThrows(() => ops.softmax(Tensor.zeros([2, 3]), -3), RangeError, /softmax.*dim/);
    expectThrows(() => ops.softmax(Tensor.fromArray(new Int32Array(6), [2, 3])), TypeError, /softmax/);
  });

  test("disposed input is a TypeError naming the op", () => {
    const d = Tensor.zeros([2, 3]);
    d.dispose();
    expectThrows(() => ops.softmax(d), TypeError, /softmax.*disposed/);
  });
});

describe("bad arguments", () => {
  test.each(ACTIVATIONS)("%s: int input, disposed input and non-Tensor are TypeErrors", (_name, op, _ref, re) => {
    expectThrows(() => op(Tensor.fromArray(new Int32Array(3), [3])), TypeError, re);
    const d = Tensor.zeros([3]);
    d.dispose();
    expectThrows(() => op(d), TypeError, new RegExp(`(${re.source}).*disposed`));
    expectThrows(() => op(3 as unknown as Tensor), TypeError, re);
  });

  test("gelu: unknown approximate is a RangeError listing the choices", () => {
    expectThrows(() => ops.gelu(Tensor.zeros([2]), { approximate: "fast" as "tanh" }), RangeError, /gelu.*"none".*"tanh"/);
  });
});
