// conv2d (NHWC input, OHWI weight; stride / padding / dilation; fused bias and residual) and the
// layout helpers, against a direct 7-loop convolution.
import { Tensor, ops } from "../../lib";
import * as R from "../helpers/naive";
import { evalOp, expectClose, expectThrows, tensorOf } from "../helpers/check";

const tol = (taps: number) => ({ atol: 1e-5 * Math.sqrt(taps), rtol: 1e-5 });
const pair = (v: number | [number, number]): [number, number] => (typeof v === "number" ? [v, v] : v);

interface Case {
  name: string;
  x: [number, number, number, number];  // N, H, W, C
  w: [number, number, number];          // K, R, S
  stride?: number | [number, number];
  padding?: number | [number, number];
  dilation?: number | [number, number];
  bias?: boolean;
  residual?: boolean;
}

const CASES: Case[] = [
  { name: "3x3 pad 1 on a 3-channel image", x: [1, 9, 9, 3], w: [8, 3, 3], padding: 1 },
  { name: "3x3 pad 1, odd sizes, bias", x: [2, 7, 5, 17], w: [33, 3, 3], padding: 1, bias: true },
  { name: "1x1 (plain GEMM path), bias + residual", x: [2, 6, 6, 33], w: [17, 1, 1], bias: true, residual: true },
  { name: "1x1 stride 2", x: [1, 7, 9, 5], w: [6, 1, 1], stride: 2 },
  { name: "1x1 with padding", x: [1, 3, 4, 2], w: [3, 1, 1], padding: 1, bias: true },
  { name: "3x3 stride 2 pad 1 (downsample)", x: [2, 9, 9, 8], w: [16, 3, 3], stride: 2, padding: 1, bias: true },
  { name: "3x3 stride 2 pad 0 on even input", x: [1, 8, 8, 4], w: [5, 3, 3], stride: 2 },
  { name: "3x3 dilation 2 pad 2", x: [1, 11, 10, 3], w: [4, 3, 3], padding: 2, dilation: 2 },
  { name: "3x5 kernel, stride [2,1], pad [1,0], dilation [1,2]", x: [2, 9, 13, 6], w: [7, 3, 5], stride: [2, 1], padding: [1, 0], dilation: [1, 2], bias: true },
  { name: "5x5 pad 2", x: [1, 6, 7, 4], w: [5, 5, 5], padding: 2 },
  { name: "kernel the size of the input (1x1 output)", x: [3, 4, 4, 5], w: [2, 4, 4], bias: true },
  { name: "kernel larger than the unpadded input", x: [1, 2, 2, 3], w: [4, 3, 3], padding: 1 },
  { name: "many channels (K and C off the tile sizes)", x: [1, 5, 6, 65], w: [40, 3, 3], padding: 1, bias: true, residual: true },
  { name: "one output channel, one input channel", x: [2, 5, 5, 1], w: [1, 3, 3], padding: 1, residual: true },
  { name: "stride larger than the kernel", x: [1, 10, 11, 3], w: [2, 2, 2], stride: 3 },
];

function refOpts(c: Case, b: R.ND | null, res: R.ND | null): R.Conv2dRef {
  return {
    stride: pair(c.stride ?? 1), padding: pair(c.padding ?? 0), dilation: pair(c.dilation ?? 1), bias: b, residual: res,
  };
}

describe("conv2d", () => {
  test.each(CASES.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const [N, H, W, C] = c.x, [K, Rh, S] = c.w;
    const x = R.randn([N, H, W, C], 4000 + C), w = R.randn([K, Rh, S, C], 4001 + K);
    const b = c.bias ? R.randn([K], 4002) : null;
    const shapeRef = R.conv2dNHWC(x, w, refOpts(c, null, null)).shape;
    const res = c.residual ? R.randn(shapeRef, 4003) : null;
    const want = R.conv2dNHWC(x, w, refOpts(c, b, res));
    const got = await evalOp(() =>
      ops.conv2d(tensorOf(x), tensorOf(w), {
        stride: c.stride, padding: c.padding, dilation: c.dilation,
        bias: b ? tensorOf(b) : null, residual: res ? tensorOf(res) : undefined,
      }));
    expect(got.shape).toEqual(want.shape);
    expectClose(got.data, want, { ...tol(Rh * S * C), label: c.name });
  });

  test("non-contiguous input, weight and residual views", async () => {
    const xNchw = R.randn([2, 5, 8, 7], 4100);                    // N, C, H, W
    const wOihw = R.randn([6, 5, 3, 3], 4101);                    // K, C, R, S
    const resT = R.randn([2, 6, 8, 7], 4102);                     // N, K, P, Q (NCHW)
    const x = R.permute(xNchw, [0, 2, 3, 1]), w = R.permute(wOihw, [0, 2, 3, 1]), res = R.permute(resT, [0, 2, 3, 1]);
    const want = R.conv2dNHWC(x, w, { padding: [1, 1], residual: res });
    const got = await evalOp(() =>
      ops.conv2d(tensorOf(xNchw).permute([0, 2, 3, 1]), tensorOf(wOihw).permute([0, 2, 3, 1]),
        { padding: 1, residual: tensorOf(resT).permute([0, 2, 3, 1]) }));
    expectClose(got.data, want, tol(45));
  });

  test("a PyTorch-layout conv through nchwToNhwc / convWeightToOHWI / nhwcToNchw", async () => {
    const xNchw = R.randn([2, 3, 9, 6], 4200), wOihw = R.randn([4, 3, 3, 3], 4201), b = R.randn([4], 4202);
    // PyTorch reference: out[n,k,p,q] = b[k] + sum_{c,r,s} x[n,c,p*2-1+r,q*2-1+s] w[k,c,r,s]
    const [N, C, H, W] = xNchw.shape, K = 4, P = 5, Q = 3;
    const want = new Float64Array(N * K * P * Q);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) for (let p = 0; p < P; p++) for (let q = 0; q < Q; q++) {
      let s = b.data[k];
      for (let c = 0; c < C; c++) for (let r = 0; r < 3; r++) for (let t = 0; t < 3; t++) {
        const ih = p * 2 - 1 + r, iw = q * 2 - 1 + t;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
        s += xNchw.data[((n * C + c) * H + ih) * W + iw] * wOihw.data[((k * C + c) * 3 + r) * 3 + t];
      }
      want[((n * K + k) * P + p) * Q + q] = s;
    }
    const got = await evalOp(() =>
      ops.nhwcToNchw(ops.conv2d(ops.nchwToNhwc(tensorOf(xNchw)), ops.convWeightToOHWI(tensorOf(wOihw)),
        { stride: 2, padding: 1, bias: tensorOf(b) })));
    expect(got.shape).toEqual([N, K, P, Q]);
    expectClose(got.data, want, tol(27));
  });

  test("layout helpers are the permutes they claim", async () => {
    const x = R.randn([2, 3, 4, 5], 4300);
    const a = await evalOp(() => ops.nchwToNhwc(tensorOf(x)));
    expectClose(a.data, R.permute(x, [0, 2, 3, 1]), { atol: 0, rtol: 0 });
    const b = await evalOp(() => ops.nhwcToNchw(tensorOf(x)));
    expectClose(b.data, R.permute(x, [0, 3, 1, 2]), { atol: 0, rtol: 0 });
    const c = await evalOp(() => ops.convWeightToOHWI(tensorOf(x)));
    expectClose(c.data, R.permute(x, [0, 2, 3, 1]), { atol: 0, rtol: 0 });
    const round = await evalOp(() => ops.nhwcToNchw(ops.nchwToNhwc(tensorOf(x))));
    expectClose(round.data, x, { atol: 0, rtol: 0 });
  });
});

describe("bad arguments", () => {
  const z = (s: number[]) => Tensor.zeros(s);
  const x = () => z([1, 5, 5, 3]), w = () => z([4, 3, 3, 3]);

  test("shapes and ranks are RangeErrors naming conv2d", () => {
    expectThrows(() => ops.conv2d(z([5, 5, 3]), w()), RangeError, /conv2d.*input/);
    expectThrows(() => ops.conv2d(x(), z([4, 3, 3])), RangeError, /conv2d.*weight/);
    expectThrows(() => ops.conv2d(x(), z([4, 3, 3, 2])), RangeError, /conv2d.*channels/);
    expectThrows(() => ops.conv2d(x(), z([4, 7, 7, 3])), RangeError, /conv2d.*larger/);
    expectThrows(() => ops.conv2d(x(), z([4, 3, 3, 3]), { dilation: 3 }), RangeError, /conv2d/);
    expectThrows(() => ops.conv2d(x(), w(), { bias: z([3]) }), RangeError, /conv2d.*bias/);
    expectThrows(() => ops.conv2d(x(), w(), { residual: z([1, 5, 5, 4]) }), RangeError, /conv2d.*residual/);
  });

  test("stride / padding / dilation values", () => {
    expectThrows(() => ops.conv2d(x(), w(), { stride: 0 }), RangeError, /conv2d.*stride/);
    expectThrows(() => ops.conv2d(x(), w(), { padding: -1 }), RangeError, /conv2d.*padding/);
    expectThrows(() => ops.conv2d(x(), w(), { dilation: [1, 0] }), RangeError, /conv2d.*dilation/);
    expectThrows(() => ops.conv2d(x(), w(), { stride: [1, 2, 3] as unknown as [number, number] }), RangeError, /conv2d/);
    expectThrows(() => ops.conv2d(x(), w(), { stride: 1.5 }), TypeError, /conv2d.*stride/);
  });

  test("dtypes, disposed and non-Tensor arguments are TypeErrors naming conv2d", () => {
    const i32 = Tensor.fromArray(new Int32Array(75), [1, 5, 5, 3]);
    expectThrows(() => ops.conv2d(i32, w()), TypeError, /conv2d.*float32/);
    expectThrows(() => ops.conv2d(x(), Tensor.fromArray(new Int32Array(108), [4, 3, 3, 3])), TypeError, /conv2d.*weight/);
    expectThrows(() => ops.conv2d(x(), w(), { bias: Tensor.fromArray(new Int32Array(4), [4]) }), TypeError, /conv2d.*bias/);
    const d = w();
    d.dispose();
    expectThrows(() => ops.conv2d(x(), d), TypeError, /conv2d.*disposed/);
    expectThrows(() => ops.conv2d(x(), new Float32Array(108) as unknown as Tensor), TypeError, /conv2d.*weight/);
    i32.dispose();
  });

  test("layout helpers name themselves in errors", () => {
    expectThrows(() => ops.convWeightToOHWI(z([4, 3, 3])), RangeError, /convWeightToOHWI/);
    expectThrows(() => ops.nchwToNhwc(z([3, 4, 5])), RangeError, /nchwToNhwc/);
    expectThrows(() => ops.nhwcToNchw(z([3, 4, 5])), RangeError, /nhwcToNchw/);
  });
});
