// groupNorm (channels-last, optional fused SiLU) and layerNorm against two-pass float64 statistics.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

interface GnCase {
  name: string;
  shape: number[];
  groups: number;
  affine?: boolean;
  silu?: boolean;
  eps?: number;
  mean?: number;
  std?: number;
  atol?: number;
}

const GN: GnCase[] = [
  { name: "SD-style 32 groups of 2 channels", shape: [2, 4, 4, 64], groups: 32, affine: true },
  { name: "odd sizes, 3 groups of 11", shape: [1, 7, 5, 33], groups: 3, affine: true },
  { name: "one group over [N, L, C]", shape: [2, 9, 17], groups: 1, affine: true },
  { name: "no spatial dims ([N, C])", shape: [3, 12], groups: 4, affine: true },
  { name: "groups == channels (instance norm)", shape: [2, 5, 5, 6], groups: 6 },
  { name: "fused SiLU", shape: [2, 3, 3, 32], groups: 8, affine: true, silu: true },
  { name: "fused SiLU without affine", shape: [1, 5, 7, 12], groups: 3, silu: true },
  { name: "eps 1e-6 on a tiny-variance input", shape: [1, 4, 4, 8], groups: 2, eps: 1e-6, std: 1e-2, affine: true },
  { name: "eps 0.1", shape: [2, 3, 5, 8], groups: 4, eps: 0.1 },
  { name: "large mean (needs a stable variance)", shape: [1, 8, 8, 32], groups: 4, mean: 50, std: 1, affine: true, atol: 5e-5 },
  { name: "long reduction (32768 values per group)", shape: [1, 32, 32, 64], groups: 2, affine: true, atol: 2e-5 },
  { name: "batch of 5 with one pixel", shape: [5, 1, 1, 20], groups: 5, affine: true },
];

describe("groupNorm", () => {
  test.each(GN.map((c) => [c.name, c] as const))("%s", async (_n, c) => {
    const C = c.shape[c.shape.length - 1];
    const x = R.randn(c.shape, 5000 + C + c.groups, c.std ?? 1, c.mean ?? 0);
    const gamma = c.affine ? R.randn([C], 5001, 0.5, 1) : null, beta = c.affine ? R.randn([C], 5002) : null;
    const got = await evalOp(() =>
      ops.groupNorm(tensorOf(x), c.groups, {
        weight: gamma ? tensorOf(gamma) : null, bias: beta ? tensorOf(beta) : undefined, eps: c.eps, silu: c.silu,
      }));
    const want = R.groupNorm(x, c.groups, { gamma, beta, eps: c.eps, silu: c.silu });
    expect(got.shape).toEqual(c.shape);
    expectClose(got.data, want, { atol: c.atol ?? 1e-5, rtol: 1e-5, label: c.name });
  });

  test("a constant group normalises to beta (variance 0, eps keeps it finite)", async () => {
    const x = R.nd(new Array(2 * 3 * 4).fill(3.25), [2, 3, 4]);
    const beta = R.nd([0.5, -1, 2, 0], [4]);
    const got = await evalOp(() => ops.groupNorm(tensorOf(x), 2, { bias: tensorOf(beta) }));
    expectClose(got.data, R.groupNorm(x, 2, { beta }), { atol: 1e-6 });
  });

  test("non-contiguous input (an NCHW tensor viewed as NHWC) and a strided weight", async () => {
    const xNchw = R.randn([2, 12, 3, 5], 5100), g = R.randn([24], 5101), b = R.randn([12], 5102);
    const x = R.permute(xNchw, [0, 2, 3, 1]);
    const got = await evalOp(() =>
      ops.groupNorm(tensorOf(xNchw).permute([0, 2, 3, 1]), 4, { weight: ops.slice(tensorOf(g), 0, 0, 24, 2), bias: tensorOf(b) }));
    expectClose(got.data, R.groupNorm(x, 4, { gamma: R.slice(g, 0, 0, 24, 2), beta: b }), { atol: 1e-5 });
  });
});

describe("layerNorm", () => {
  test.each([
    ["odd rows and channels", [7, 33], true, true],
    ["3-D", [2, 5, 65], true, true],
    ["CLIP width", [3, 768], true, true],
    ["weight only", [4, 17], true, false],
    ["no affine", [6, 40], false, false],
    ["long row", [2, 4099], true, true],
    ["1-D input", [19], true, true],
  ])("%s [%j]", async (_n, shape, hasW, hasB) => {
    const C = shape[shape.length - 1];
    const x = R.randn(shape, 5200 + C, 2, 0.5);
    const w = R.randn([C], 5201, 0.5, 1), b = R.randn([C], 5202);
    const got = await evalOp(() =>
      ops.layerNorm(tensorOf(x), { weight: hasW ? tensorOf(w) : null, bias: hasB ? tensorOf(b) : null }));
    expectClose(got.data, R.layerNorm(x, { gamma: hasW ? w : null, beta: hasB ? b : null }), { atol: 1e-5, label: `[${shape}]` });
  });

  test("one channel: output is beta", async () => {
    const x = R.randn([4, 1], 5300), b = R.nd([0.75], [1]);
    const got = await evalOp(() => ops.layerNorm(tensorOf(x), { bias: tensorOf(b) }));
    expectClose(got.data, [0.75, 0.75, 0.75, 0.75], { atol: 1e-6 });
  });

  test("large mean, custom eps, transposed input", async () => {
    const x = R.randn([64, 9], 5301, 1, 100);
    const got = await evalOp(() => ops.layerNorm(tensorOf(x).transpose(0, 1), { eps: 1e-6 }));
    expectClose(got.data, R.layerNorm(R.transpose(x, 0, 1), { eps: 1e-6 }), { atol: 5e-5 });
    const y = R.randn([5, 12], 5302, 0.1);
    const got2 = await evalOp(() => ops.layerNorm(tensorOf(y), { eps: 0.5 }));
    expectClose(got2.data, R.layerNorm(y, { eps: 0.5 }), { atol: 1e-6 });
  });
});

describe("bad arguments", () => {
  const z = (s: number[]) => Tensor.zeros(s);
  const i32 = (s: number[]) => Tensor.fromArray(new Int32Array(R.numel(s)), s);

  test("groupNorm", () => {
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 4), RangeError, /groupNorm.*groups/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 0), RangeError, /groupNorm.*groups/);
    expectThrows(() => ops.groupNorm(z([6]), 2), RangeError, /groupNorm.*dims/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 2, { weight: z([4]) }), RangeError, /groupNorm.*gamma|groupNorm.*weight/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 2, { bias: z([6, 1]) }), RangeError, /groupNorm.*beta|groupNorm.*bias/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 2, { eps: -1 }), RangeError, /groupNorm.*eps/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 2.5), TypeError, /groupNorm.*groups/);
    expectThrows(() => ops.groupNorm(i32([1, 2, 2, 4]), 2), TypeError, /groupNorm.*float32/);
    expectThrows(() => ops.groupNorm(z([1, 4, 4, 6]), 2, { weight: i32([6]) }), TypeError, /groupNorm/);
    const d = z([1, 2, 2, 4]);
    d.dispose();
    expectThrows(() => ops.groupNorm(d, 2), TypeError, /groupNorm.*disposed/);
    expectThrows(() => ops.groupNorm(z([1, 2, 2, 4]), 2, { weight: d }), TypeError, /groupNorm.*disposed/);
    expectThrows(() => ops.groupNorm("x" as unknown as Tensor, 2), TypeError, /groupNorm/);
  });

  test("layerNorm", () => {
    expectThrows(() => ops.layerNorm(z([3, 5]), { weight: z([4]) }), RangeError, /layerNorm/);
    expectThrows(() => ops.layerNorm(z([3, 5]), { bias: z([3]) }), RangeError, /layerNorm/);
    expectThrows(() => ops.layerNorm(z([]), {}), RangeError, /layerNorm/);
    expectThrows(() => ops.layerNorm(z([3, 5]), { eps: NaN }), RangeError, /layerNorm.*eps/);
    expectThrows(() => ops.layerNorm(i32([3, 5])), TypeError, /layerNorm.*float32/);
    expectThrows(() => ops.layerNorm(z([3, 5]), { bias: i32([5]) }), TypeError, /layerNorm/);
    const d = z([3, 5]);
    d.dispose();
    expectThrows(() => ops.layerNorm(d), TypeError, /layerNorm.*disposed/);
    expectThrows(() => ops.layerNorm({} as Tensor), TypeError, /layerNorm/);
  });
});
