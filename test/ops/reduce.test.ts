// sum / mean / max over one or several dims, with and without keepdim.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

type Op = "sum" | "mean" | "max";
const OPS: Op[] = ["sum", "mean", "max"];

const CASES: [number[], number | number[] | undefined, boolean][] = [
  [[1], 0, false],
  [[17], 0, true],
  [[7, 33], -1, false],
  [[7, 33], 0, true],
  [[2, 5, 65], 1, true],
  [[2, 5, 65], 1, false],
  [[3, 4, 5], [0, 2], false],
  [[3, 4, 5], [0, 2], true],
  [[3, 4, 5, 6], [-1, -3], true],
  [[17, 3], undefined, false],
  [[2, 3, 4], [1, 1, -2], false],
  [[64, 129], 1, false],
  [[129, 64], 0, false],
];

describe("reductions", () => {
  for (const op of OPS)
    test.each(CASES)(`${op} of [%j] over %j, keepdim %s`, async (shape, dims, keepdim) => {
      const x = R.randn(shape, 8000 + shape.length * 13 + (typeof dims === "number" ? dims : 7));
      const got = await evalOp(() => ops[op](tensorOf(x), dims, keepdim));
      const want = R.reduce(op, x, dims, keepdim);
      expect(got.shape).toEqual(want.shape);
      expectClose(got.data, want, { atol: 1e-5, rtol: 1e-5 });
    });

  test.each(OPS)("%s over a long dim (1e5 values)", async (op) => {
    const x = R.randn([100000], 8100, 1, 0.25);
    const got = await evalOp(() => ops[op](tensorOf(x), 0));
    expectClose(got.data, R.reduce(op, x, 0), { atol: 1e-4, rtol: 1e-6 });
    const y = R.randn([3, 40000], 8101);
    const got2 = await evalOp(() => ops[op](tensorOf(y), -1, true));
    expectClose(got2.data, R.reduce(op, y, -1, true), { atol: 1e-4, rtol: 1e-6 });
  });

  test.each(OPS)("%s of a non-contiguous view", async (op) => {
    const x = R.randn([6, 9, 4], 8200);
    const got = await evalOp(() => ops[op](ops.slice(tensorOf(x).permute([2, 0, 1]), 2, 1, 9, 3), [0, 2]));
    expectClose(got.data, R.reduce(op, R.slice(R.permute(x, [2, 0, 1]), 2, 1, 9, 3), [0, 2]));
  });

  test("max of all-negative values, -inf and NaN", async () => {
    const x = R.nd([-5, -3, -4, -Infinity, -Infinity, -Infinity, 1, NaN, 2], [3, 3]);
    const got = await evalOp(() => ops.max(tensorOf(x), 1));
    expectClose(got.data, [-3, -Infinity, NaN], { atol: 0, rtol: 0 });
  });

  test("an empty dim list returns a same-valued copy", async () => {
    const x = R.randn([3, 4], 8300);
    const got = await evalOp(() => ops.sum(tensorOf(x), []));
    expect(got.shape).toEqual([3, 4]);
    expectClose(got.data, x, { atol: 0, rtol: 0 });
  });

  test("sum and mean of a zero-size dim are 0 and NaN", async () => {
    const s = await evalOp(() => ops.sum(Tensor.zeros([2, 0]), 1));
    expectClose(s.data, [0, 0], { atol: 0, rtol: 0 });
    const m = await evalOp(() => ops.mean(Tensor.zeros([2, 0]), 1));
    expectClose(m.data, [NaN, NaN], { atol: 0, rtol: 0 });
  });
});

describe("bad arguments", () => {
  test.each(OPS)("%s: bad dims are RangeErrors, wrong dtype / non-Tensor TypeErrors, naming the op", (op) => {
    expectThrows(() => ops[op](Tensor.zeros([2, 3]), 2), RangeError, new RegExp(`${op}.*dim`));
    expectThrows(() => ops[op](Tensor.zeros([2, 3]), [0, -3]), RangeError, new RegExp(`${op}.*dim`));
    expectThrows(() => ops[op](Tensor.fromArray(new Int32Array(6), [2, 3]), 0), TypeError, new RegExp(`${op}.*float32`));
    expectThrows(() => ops[op]({ shape: [2], ndim: 1 } as unknown as Tensor, 0), TypeError, new RegExp(op));
  });

  test.each(OPS)("%s: a disposed input is a TypeError", (op) => {
    const d = Tensor.zeros([2, 3]);
    d.dispose();
    expectThrows(() => ops[op](d, 0), TypeError, /disposed/);
    expectThrows(() => ops[op](d), TypeError, /disposed/);
  });

  test("max over an empty dim is a RangeError", () => {
    expectThrows(() => ops.max(Tensor.zeros([2, 0]), 1), RangeError, /max.*empty/);
  });
});
