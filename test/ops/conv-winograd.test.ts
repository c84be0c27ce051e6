// The Winograd F(4x4,3x3) conv2d path (native/cpu/conv2d_winograd.cc), forced on, against a
// float64 direct convolution: odd sizes (edge tiles), 1x1 and 1xN images, channel counts off the
// vector and register-tile widths, batch > 1, padding 0/1/2, bias and residual, and the blocking
// paths (several GEMM-depth blocks, output-channel blocks, channel slices with few tiles).
// Error is measured relative to max|ref|, the golden tests' yardstick (1e-4 there).
import { ops } from "../../lib";
import { native } from "../../lib/native";
import * as R from "../helpers/naive";
import { evalOp, expectThrows, tensorOf } from "../helpers/check";

interface Case {
  name: string;
  x: [number, number, number, number];  // N, H, W, C
  K: number;
  padding: number | [number, number];
  bias?: boolean;
  residual?: boolean;
  env?: Record<string, string>;  // scratch budgets (MiB) that force more blocks
}

const CASES: Case[] = [
  { name: "1x1 image, pad 1", x: [1, 1, 1, 5], K: 3, padding: 1, bias: true },
  { name: "1xN image, pad 1, residual", x: [2, 1, 7, 9], K: 6, padding: 1, residual: true },
  { name: "odd H/W, C=17 K=33, bias", x: [2, 7, 5, 17], K: 33, padding: 1, bias: true },
  { name: "pad 0, H/W not multiples of 4, bias + residual", x: [2, 9, 11, 20], K: 18, padding: 0, bias: true, residual: true },
  { name: "pad 0 with a 3x3 input (one output pixel)", x: [3, 3, 3, 7], K: 5, padding: 0 },
  { name: "pad 2, batch 3", x: [3, 5, 9, 16], K: 16, padding: 2, bias: true },
  { name: "asymmetric pad [0, 1]", x: [1, 6, 10, 12], K: 7, padding: [0, 1], residual: true },
  { name: "C=40 K=70 on 13x6, bias + residual", x: [1, 13, 6, 40], K: 70, padding: 1, bias: true, residual: true },
  { name: "few tiles: output channels split over threads", x: [1, 8, 8, 64], K: 96, padding: 1, bias: true },
  { name: "C=400: two GEMM-depth blocks", x: [1, 10, 10, 400], K: 36, padding: 1, bias: true },
  {
    name: "tiny budgets: several output-channel and tile blocks", x: [2, 19, 23, 160], K: 100, padding: 1, bias: true, residual: true,
    env: { DIFFUSEKIT_WINO_U_MB: "1", DIFFUSEKIT_WINO_THREAD_MB: "1" },
  },
  {
    name: "few tiles, several output-channel blocks: shared transformed input", x: [1, 6, 7, 160], K: 100, padding: 1, residual: true,
    env: { DIFFUSEKIT_WINO_U_MB: "1" },
  },
];

const pair = (v: number | [number, number]): [number, number] => (typeof v === "number" ? [v, v] : v);

describe("conv2d, Winograd path", () => {
  let prev: "auto" | "direct" | "winograd";
  beforeAll(() => { prev = native().setConv2dAlgo("winograd"); });
  afterAll(() => { native().setConv2dAlgo(prev); });

  test.each(CASES.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const [N, H, W, C] = c.x, K = c.K, padding = pair(c.padding);
    expect(native().conv2dAlgo([N, H, W, C], [K, 3, 3, C], [1, 1], padding, [1, 1])).toBe("winograd");
    const x = R.randn([N, H, W, C], 7000 + C), w = R.randn([K, 3, 3, C], 7001 + K, 0.2);
    const b = c.bias ? R.randn([K], 7002) : null;
    const outShape = R.conv2dNHWC(x, w, { padding }).shape;
    const res = c.residual ? R.randn(outShape, 7003) : null;
    const want = R.conv2dNHWC(x, w, { padding, bias: b, residual: res });
    const saved: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(c.env ?? {})) { saved[k] = process.env[k]; process.env[k] = v; }
    let got: { data: Float32Array; shape: number[] };
    try {
      got = await evalOp(() => ops.conv2d(tensorOf(x), tensorOf(w), { padding, bias: b ? tensorOf(b) : null, residual: res ? tensorOf(res) : undefined }));
    } finally {
      for (const [k, v] of Object.entries(saved)) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
    }
    expect(got.shape).toEqual(want.shape);
    let maxRef = 0, maxErr = 0;
    for (let i = 0; i < want.data.length; i++) {
      maxRef = Math.max(maxRef, Math.abs(want.data[i]));
      const e = Math.abs(got.data[i] - want.data[i]);
      if (!(e <= maxErr)) maxErr = e;  // NaN propagates into a failure
    }
    const rel = maxErr / maxRef;
    console.log(`winograd ${c.name}: max |err| / max |ref| = ${rel.toExponential(2)}`);
    expect(rel).toBeLessThan(1e-5);  // a tenth of the golden tests' budget
  });
});

describe("conv2d path choice", () => {
  let prev: "auto" | "direct" | "winograd";
  beforeAll(() => { prev = native().setConv2dAlgo("auto"); });
  afterAll(() => { native().setConv2dAlgo(prev); });
  const algo = (x: number[], w: number[], stride = 1, pad = 1, dil = 1) =>
    native().conv2dAlgo(x, w, [stride, stride], [pad, pad], [dil, dil]);

  test("auto takes Winograd for SD's stride-1 3x3 convs and the direct path elsewhere", () => {
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320])).toBe("winograd");
    expect(algo([1, 256, 256, 256], [256, 3, 3, 256])).toBe("winograd");
    expect(algo([2, 64, 64, 320], [320, 1, 1, 320], 1, 0)).toBe("direct");    // 1x1
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320], 2)).toBe("direct");       // stride 2
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320], 1, 2, 2)).toBe("direct"); // dilation 2
    expect(algo([1, 512, 512, 3], [128, 3, 3, 3])).toBe("direct");            // RGB input layer
  });

  test("forcing a path, and bad modes", () => {
    native().setConv2dAlgo("direct");
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320])).toBe("direct");
    native().setConv2dAlgo("winograd");
    expect(algo([1, 4, 4, 3], [2, 3, 3, 3])).toBe("winograd");
    expect(algo([1, 4, 4, 3], [2, 3, 3, 3], 2)).toBe("direct");  // Winograd cannot do stride 2
    native().setConv2dAlgo("auto");
    expectThrows(() => native().setConv2dAlgo("fast" as "auto"), RangeError, /mode must be/);
    expectThrows(() => algo([1, 4, 4], [2, 3, 3, 3]), RangeError, /4 values/);
    expectThrows(() => algo([1, 4, 4, 3], [2, 3, 3, 5]), RangeError, /channel/);
  });
});
