// matmul (batched, broadcast of an unbatched side, transposed / sliced views) and linear (bias,
// residual) against float64 loops. GEMM shapes are chosen off the kernel's tile sizes.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

/** float32 accumulation over K terms of unit-variance products: error grows like sqrt(K). */
const tol = (K: number) => ({ atol: 1e-5 * Math.sqrt(Math.max(K, 1)), rtol: 1e-5 });

describe("matmul", () => {
  test.each([
    [[1, 1], [1, 1]],
    [[3, 7], [7, 5]],
    [[17, 33], [33, 65]],
    [[65, 129], [129, 31]],
    [[1, 257], [257, 1]],
    [[130, 1], [1, 70]],
    [[33, 300], [300, 47]],
    [[97, 1000], [1000, 19]],
    [[2, 3, 17, 9], [2, 3, 9, 5]],
    [[4, 7, 9], [9, 5]],
    [[7, 9], [3, 9, 5]],
    [[1, 5, 6], [6, 4]],
    [[5, 6], [1, 6, 4]],
    [[3, 31, 67], [3, 67, 35]],
  ])("[%j] @ [%j]", async (sa, sb) => {
    const a = R.randn(sa, 3000 + sa[0]), b = R.randn(sb, 3100 + sb[sb.length - 1]);
    const got = await evalOp(() => ops.matmul(tensorOf(a), tensorOf(b)));
    const want = R.matmul(a, b);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, { ...tol(sa[sa.length - 1]), label: `[${sa}] @ [${sb}]` });
  });

  test("K = 0 gives zeros", async () => {
    const got = await evalOp(() => ops.matmul(Tensor.zeros([3, 0]), Tensor.zeros([0, 4])));
    expect(got.shape).toEqual([3, 4]);
    expectClose(got.data, new Array(12).fill(0), { atol: 0, rtol: 0 });
  });

  test.each([
    ["a transposed", true, false, 37, 45, 29],
    ["b transposed (nn.Linear weight)", false, true, 37, 45, 29],
    ["both transposed", true, true, 19, 8, 65],
    ["both transposed, vector-like", true, true, 1, 33, 1],
  ])("%s", async (_n, ta, tb, M, K, N) => {
    const a = ta ? R.randn([K as number, M as number], 3200) : R.randn([M as number, K as number], 3200);
    const b = tb ? R.randn([N as number, K as number], 3201) : R.randn([K as number, N as number], 3201);
    const got = await evalOp(() => {
      const A = ta ? tensorOf(a).transpose(0, 1) : tensorOf(a);
      const B = tb ? tensorOf(b).transpose(0, 1) : tensorOf(b);
      return ops.matmul(A, B);
    });
    const want = R.matmul(ta ? R.transpose(a, 0, 1) : a, tb ? R.transpose(b, 0, 1) : b);
    expectClose(got.data, want, tol(K as number));
  });

  test("batched transposed views: q @ k^T with k as a permuted view", async () => {
    const q = R.randn([3, 17, 40], 3300), k = R.randn([3, 23, 40], 3301);
    const got = await evalOp(() => ops.matmul(tensorOf(q), tensorOf(k).transpose(1, 2)));
    expectClose(got.data, R.matmul(q, R.transpose(k, 1, 2)), tol(40));
  });

  test("sliced operands whose rows are longer than their columns (ld > cols)", async () => {
    const a = R.randn([21, 50], 3400), b = R.randn([33, 70], 3401);
    const got = await evalOp(() => ops.matmul(ops.slice(tensorOf(a), 1, 7, 40), ops.slice(tensorOf(b), 1, 3, 68)));
    expectClose(got.data, R.matmul(R.slice(a, 1, 7, 40), R.slice(b, 1, 3, 68)), tol(33));
    // a column block of a row-sliced matrix, and a strided last dim (not a GEMM layout: copied)
    const got2 = await evalOp(() => ops.matmul(ops.slice(ops.slice(tensorOf(a), 0, 2, 19), 1, 0, 50, 2), ops.slice(tensorOf(b), 0, 0, 25)));
    expectClose(got2.data, R.matmul(R.slice(R.slice(a, 0, 2, 19), 1, 0, 50, 2), R.slice(b, 0, 0, 25)), tol(25));
  });

  test("batch views: token-major [M, B, K] permuted to [B, M, K]; a 4-D view with non-uniform batch strides", async () => {
    const x = R.randn([9, 4, 13], 3500), w = R.randn([4, 13, 6], 3501);
    const got = await evalOp(() => ops.matmul(tensorOf(x).permute([1, 0, 2]), tensorOf(w)));
    expectClose(got.data, R.matmul(R.permute(x, [1, 0, 2]), w), tol(13));
    const y = R.randn([2, 5, 3, 7], 3502), v = R.randn([2, 3, 7, 4], 3503);
    const got2 = await evalOp(() => ops.matmul(tensorOf(y).permute([0, 2, 1, 3]), tensorOf(v)));
    expectClose(got2.data, R.matmul(R.permute(y, [0, 2, 1, 3]), v), tol(7));
  });

  test("the same input on both sides (x @ x^T)", async () => {
    const x = R.randn([18, 35], 3600);
    const got = await evalOp(() => {
      const t = tensorOf(x);
      return ops.matmul(t, t.transpose(0, 1));
    });
    expectClose(got.data, R.matmul(x, R.transpose(x, 0, 1)), tol(35));
  });
});

describe("linear", () => {
  test.each([
    ["2-D, bias", [7, 33], 17, true, false],
    ["1-D input", [33], 5, true, false],
    ["3-D input, bias and residual", [2, 5, 65], 129, true, true],
    ["no bias, residual only", [9, 16], 31, false, true],
    ["1 x 1", [1, 1], 1, true, true],
    ["long reduction", [4, 1280], 33, true, false],
    ["many rows", [257, 40], 24, true, true],
  ])("%s", async (_n, xs, outF, hasBias, hasRes) => {
    const shape = xs as number[], inF = shape[shape.length - 1], o = outF as number;
    const x = R.randn(shape, 3700 + inF), w = R.randn([o, inF], 3701), b = R.randn([o], 3702);
    const res = R.randn([...shape.slice(0, -1), o], 3703);
    const got = await evalOp(() =>
      ops.linear(tensorOf(x), tensorOf(w), hasBias ? tensorOf(b) : null, hasRes ? tensorOf(res) : undefined));
    const want = R.linear(x, w, hasBias ? b : null, hasRes ? res : null);
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, tol(inF));
  });

  test("views: transposed weight, transposed input, strided bias, residual view", async () => {
    const x = R.randn([24, 10], 3800);  // used as [10, 24]
    const wt = R.randn([24, 15], 3801);  // weight stored [in, out], used as its transpose
    const b = R.randn([30], 3802), res = R.randn([15, 10], 3803);
    const got = await evalOp(() =>
      ops.linear(tensorOf(x).transpose(0, 1), tensorOf(wt).transpose(0, 1), ops.slice(tensorOf(b), 0, 0, 30, 2),
        tensorOf(res).transpose(0, 1)));
    const want = R.linear(R.transpose(x, 0, 1), R.transpose(wt, 0, 1), R.slice(b, 0, 0, 30, 2), R.transpose(res, 0, 1));
    expectClose(got.data, want, tol(24));
  });

  test("q, k, v as slices of one fused projection weight", async () => {
    const x = R.randn([2, 7, 32], 3900), w = R.randn([96, 32], 3901);
    for (let i = 0; i < 3; i++) {
      const got = await evalOp(() => ops.linear(tensorOf(x), ops.slice(tensorOf(w), 0, 32 * i, 32 * i + 32)));
      expectClose(got.data, R.linear(x, R.slice(w, 0, 32 * i, 32 * i + 32)), tol(32));
    }
  });
});

describe("bad arguments", () => {
  const z = (s: number[]) => Tensor.zeros(s);
  const i32 = (s: number[]) => Tensor.fromArray(new Int32Array(R.numel(s)), s);

  test("matmul", () => {
    expectThrows(() => ops.matmul(z([3, 4]), z([5, 6])), RangeError, /matmul.*inner/);
    expectThrows(() => ops.matmul(z([4]), z([4, 2])), RangeError, /matmul.*dims/);
    expectThrows(() => ops.matmul(z([2, 4]), z([4])), RangeError, /matmul/);
    expectThrows(() => ops.matmul(z([2, 3, 4]), z([3, 4, 5])), RangeError, /matmul.*batch/);
    expectThrows(() => ops.matmul(z([2, 1, 3, 4]), z([1, 3, 4, 5])), RangeError, /matmul.*batch/);
    expectThrows(() => ops.matmul(i32([2, 2]), z([2, 2])), TypeError, /matmul.*float32/);
    expectThrows(() => ops.matmul(z([2, 2]), i32([2, 2])), TypeError, /matmul/);
    expectThrows(() => ops.matmul(Tensor.zeros([2, 2], { dtype: "float16" }), Tensor.zeros([2, 2], { dtype: "float16" })),
      TypeError, /matmul/);
    const d = z([2, 2]);
    d.dispose();
    expectThrows(() => ops.matmul(d, z([2, 2])), TypeError, /matmul.*disposed/);
    expectThrows(() => ops.matmul(z([2, 2]), d), TypeError, /matmul.*disposed/);
    expectThrows(() => ops.matmul({} as Tensor, z([2, 2])), TypeError, /matmul/);
  });

  test("null / undefined operands are TypeErrors naming the op", () => {
    expectThrows(() => ops.matmul(z([2, 2]), null as unknown as Tensor), TypeError, /matmul/);
    expectThrows(() => ops.linear(undefined as unknown as Tensor, z([2, 2])), TypeError, /linear/);
  });

  test("linear", () => {
    expectThrows(() => ops.linear(z([3, 4]), z([5, 6])), RangeError, /linear.*input features/);
    expectThrows(() => ops.linear(z([3, 4]), z([5, 4]), z([4])), RangeError, /linear.*bias/);
    expectThrows(() => ops.linear(z([3, 4]), z([5, 4]), null, z([3, 4])), RangeError, /linear.*residual/);
    expectThrows(() => ops.linear(z([3, 4]), z([2, 5, 4])), RangeError, /linear.*weight/);
    expectThrows(() => ops.linear(i32([3, 4]), z([5, 4])), TypeError, /linear/);
    expectThrows(() => ops.linear(z([3, 4]), z([5, 4]), i32([5])), TypeError, /linear.*bias/);
    const d = z([5, 4]);
    d.dispose();
    expectThrows(() => ops.linear(z([3, 4]), d), TypeError, /linear.*disposed/);
    expectThrows(() => ops.linear(z([3, 4]), [1, 2] as unknown as Tensor), TypeError, /linear/);
  });
});
