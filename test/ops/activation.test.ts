// Activations (silu, sigmoid, tanh, gelu erf/tanh, quickGelu, geglu) and softmax over any dim.
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
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

  // g swept over [-9, 9] (x Phi(x) down to 1e-18), h random, C = 1001 (not a multiple of 16).
  const sweep = (): R.ND => {
    const rows = 3, C = 1001, x = R.randn([rows, 2 * C], 1120, 2);
    for (let r = 0; r < rows; r++) for (let i = 0; i < C; i++) x.data[r * 2 * C + C + i] = -9 + (18 * (r * C + i)) / (rows * C - 1);
    return R.map(x, (v) => Math.fround(v));
  };
  // g = inf -> h * inf, g = -inf -> NaN (-inf * 0, as x (1 + erf) gives), NaN -> NaN, |g| = 40 saturates.
  const specials = (): R.ND => R.nd([1, -2, 3, 4, 0.5, 2, 1, Infinity, -Infinity, NaN, 40, -40, 0, -1e-30], [1, 14]);

  test("x Phi(x) to a few float32 ulps over [-9, 9], the negative tail included", async () => {
    const x = sweep();
    const got = await evalOp(() => ops.geglu(tensorOf(x)));
    expectClose(got.data, R.geglu(x), { atol: 1e-37, rtol: 1e-6, label: "sweep" });
    const sp = specials();
    const gs = await evalOp(() => ops.geglu(tensorOf(sp)));
    expectClose(gs.data, R.geglu(sp), { atol: 1e-37, rtol: 1e-6, label: "specials" });
  });

  test("the scalar fallback (DIFFUSEKIT_ISA=avx2) gives the same accuracy, float32 and bfloat16", () => {
    const addon = path.resolve(__dirname, "../../build/Release/diffusekit.node");
    if (!fs.existsSync(addon)) return;
    const x = sweep(), sp = specials();
    // A child process: the ISA cap is read once per process.
    const script = `
      const a = require(${JSON.stringify(addon)});
      const inp = JSON.parse(process.argv[1]), out = {};
      (async () => {
        for (const dt of ["float32", "bfloat16"]) for (const k of ["x", "sp"]) {
          const t = a.to(a.fromBuffer(Float32Array.from(inp[k].data.map(Number)), inp[k].shape, "float32", "cpu"), "cpu", dt);
          const b = await a.to(a.geglu(t), "cpu", "float32").read();
          out[dt + k] = Array.from(new Float32Array(b), (v) => Number.isFinite(v) ? v : String(v));
        }
        process.stdout.write(JSON.stringify(out));
      })();`;
    const enc = (a: R.ND): { data: (number | string)[]; shape: number[] } => ({ data: Array.from(a.data, (v) => (Number.isFinite(v) ? v : String(v))), shape: [...a.shape] });
    const arg = JSON.stringify({ x: enc(x), sp: enc(sp) });  // JSON has no inf / NaN: sent as strings
    const r = spawnSync(process.execPath, ["-e", script, arg], { env: { ...process.env, DIFFUSEKIT_ISA: "avx2" }, encoding: "utf8" });
    expect(r.stderr).toBe("");
    const res = JSON.parse(r.stdout) as Record<string, (number | string)[]>;
    const num = (k: string): Float32Array => Float32Array.from(res[k], (v) => Number(v));
    expectClose(num("float32x"), R.geglu(x), { atol: 1e-37, rtol: 1e-6, label: "fallback sweep" });
    expectClose(num("float32sp"), R.geglu(sp), { atol: 1e-37, rtol: 1e-6, label: "fallback specials" });
    // bf16: inputs and output rounded to bf16 -> one bf16 ulp (2^-8) of each value.
    const xb = R.map(x, (v) => R.roundBF16(v)), spb = R.map(sp, (v) => R.roundBF16(v));
    expectClose(num("bfloat16x"), R.geglu(xb), { atol: 1e-37, rtol: 2 ** -8, label: "fallback bf16 sweep" });
    expectClose(num("bfloat16sp"), R.geglu(spb), { atol: 1e-37, rtol: 2 ** -8, label: "fallback bf16 specials" });
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
