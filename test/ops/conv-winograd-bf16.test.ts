// The bfloat16 Winograd F(2x2,3x3) conv2d path (native/cpu/conv2d_winograd_bf16.cc), forced on,
// against a float64 direct convolution of the same bf16-rounded inputs: odd sizes (edge tiles),
// 1x1 and 1xN images, odd channel counts (a zero-padded bf16 pair), counts off the 14 x 32 tile,
// batch > 1, padding 0/1/2, bias and residual, and the blocking paths (two GEMM-depth blocks,
// output-channel and tile blocks, channel slices with few tiles, shared transformed input).
// The transformed operands are rounded to bf16, so the error is a few bf16 roundings of the
// output scale: measured as max|err| / max|ref| and compared with the direct bf16 conv's own
// error on the same inputs (which rounds only the output).
import { Tensor, ops } from "../../lib";
import { native } from "../../lib/native";
import * as R from "../helpers/naive";
import { evalOp } from "../helpers/check";

interface Case {
  name: string;
  x: [number, number, number, number];  // N, H, W, C
  K: number;
  padding: number | [number, number];
  wStd?: number;  // default 1 / sqrt(9 C)
  bias?: boolean;
  residual?: boolean;
  env?: Record<string, string>;  // scratch budgets (MiB) that force more blocks
}

const CASES: Case[] = [
  { name: "1x1 image, pad 1", x: [1, 1, 1, 5], K: 3, padding: 1, bias: true },
  { name: "1xN image, pad 1, residual", x: [2, 1, 7, 9], K: 6, padding: 1, residual: true },
  { name: "odd H/W, C=17 K=33, bias", x: [2, 7, 5, 17], K: 33, padding: 1, bias: true },
  { name: "pad 0, odd H/W, bias + residual", x: [2, 9, 11, 20], K: 18, padding: 0, bias: true, residual: true },
  { name: "pad 0 with a 3x3 input (one output pixel)", x: [3, 3, 3, 7], K: 5, padding: 0 },
  { name: "pad 2, batch 3", x: [3, 5, 9, 16], K: 16, padding: 2, bias: true },
  { name: "asymmetric pad [0, 1]", x: [1, 6, 10, 12], K: 7, padding: [0, 1], residual: true },
  { name: "C=41 K=70 on 13x6 (odd depth), bias + residual", x: [1, 13, 6, 41], K: 70, padding: 1, bias: true, residual: true },
  { name: "few tiles: output channels split over threads", x: [1, 8, 8, 64], K: 96, padding: 1, bias: true },
  { name: "C=801: two GEMM-depth blocks, the last one odd", x: [1, 6, 6, 801], K: 36, padding: 1, bias: true },
  { name: "SD-like: N(0,1) x, N(0, 0.02^2) w, C=K=320", x: [1, 16, 16, 320], K: 320, padding: 1, wStd: 0.02, bias: true },
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
const bf = (x: R.ND): R.ND => R.map(x, (v) => R.roundBF16(v));
const tb = (x: R.ND): Tensor => Tensor.fromArray(Float32Array.from(x.data), x.shape, { dtype: "bfloat16" });

function relErr(got: Float32Array, want: R.ND): number {
  let maxRef = 0, maxErr = 0;
  for (let i = 0; i < want.data.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(want.data[i]));
    const e = Math.abs(got[i] - want.data[i]);
    if (!(e <= maxErr)) maxErr = e;  // NaN propagates into a failure
  }
  return maxErr / maxRef;
}

const hasBf16 = (): boolean => native().conv2dAlgo([1, 8, 8, 32], [32, 3, 3, 32], [1, 1], [1, 1], [1, 1], "bfloat16") !== undefined;

describe("bf16 conv2d, Winograd path", () => {
  let prev: "auto" | "direct" | "winograd";
  beforeAll(() => { prev = native().setConv2dAlgo("winograd"); });
  afterAll(() => { native().setConv2dAlgo(prev); });

  test.each(CASES.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const [N, H, W, C] = c.x, K = c.K, padding = pair(c.padding);
    expect(hasBf16()).toBe(true);
    expect(native().conv2dAlgo([N, H, W, C], [K, 3, 3, C], [1, 1], padding, [1, 1], "bfloat16")).toBe("winograd");
    const x = bf(R.randn([N, H, W, C], 7100 + C)), w = bf(R.randn([K, 3, 3, C], 7101 + K, c.wStd ?? 1 / Math.sqrt(9 * C)));
    const b = c.bias ? bf(R.randn([K], 7102, 0.5)) : null;
    const outShape = R.conv2dNHWC(x, w, { padding }).shape;
    const res = c.residual ? bf(R.randn(outShape, 7103)) : null;
    const want = R.conv2dNHWC(x, w, { padding, bias: b, residual: res });
    const run = () => evalOp(() => {
      const out = ops.conv2d(tb(x), tb(w), { padding, bias: b ? tb(b) : null, residual: res ? tb(res) : undefined });
      expect(out.dtype).toBe("bfloat16");
      return out;
    });
    const saved: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(c.env ?? {})) { saved[k] = process.env[k]; process.env[k] = v; }
    let got: { data: Float32Array; shape: number[] };
    try {
      got = await run();
    } finally {
      for (const [k, v] of Object.entries(saved)) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
    }
    native().setConv2dAlgo("direct");
    const direct = await run();
    native().setConv2dAlgo("winograd");
    expect(got.shape).toEqual(want.shape);
    const rel = relErr(got.data, want), relDirect = relErr(direct.data, want);
    console.log(`bf16 winograd ${c.name}: max |err| / max |ref| = ${rel.toExponential(2)} (direct bf16 ${relDirect.toExponential(2)})`);
    // a bf16 ulp of the output scale is 2^-8 = 3.9e-3; the direct conv's error is half of one at most
    expect(rel).toBeLessThan(2.5 * 2 ** -8);
    expect(rel).toBeLessThan(Math.max(3 * relDirect, 2 ** -9));
  });
});

describe("bf16 conv2d path choice", () => {
  let prev: "auto" | "direct" | "winograd";
  beforeAll(() => { prev = native().setConv2dAlgo("auto"); });
  afterAll(() => { native().setConv2dAlgo(prev); });
  const algo = (x: number[], w: number[], stride = 1, pad = 1, dil = 1) =>
    native().conv2dAlgo(x, w, [stride, stride], [pad, pad], [dil, dil], "bfloat16");

  test("auto takes F(2,3) for bf16 at U-Net shapes, direct where tiles or channels are few; forcing opts in everywhere", () => {
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320])).toBe("winograd");
    expect(algo([2, 16, 16, 1280], [1280, 3, 3, 1280])).toBe("winograd");
    expect(algo([2, 8, 8, 1280], [1280, 3, 3, 1280])).toBe("winograd");   // 32 tiles: 1.17x measured
    expect(algo([1, 8, 8, 1280], [1280, 3, 3, 1280])).toBe("direct");     // 16 tiles: a tie
    expect(algo([2, 64, 64, 3], [320, 3, 3, 3])).toBe("direct");          // RGB / latent-channel layers
    native().setConv2dAlgo("winograd");
    expect(algo([1, 512, 512, 128], [128, 3, 3, 128])).toBe("winograd");
    expect(algo([2, 64, 64, 320], [320, 1, 1, 320], 1, 0)).toBe("direct");    // 1x1
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320], 2)).toBe("direct");       // stride 2
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320], 1, 2, 2)).toBe("direct"); // dilation 2
    native().setConv2dAlgo("auto");
  });

  test("a call's algo request is obeyed under auto (the VAE asks for direct in bf16), and checked", async () => {
    const x = Tensor.randn([2, 12, 12, 64], { seed: 3, dtype: "bfloat16" });
    const w = ops.mul(Tensor.randn([64, 3, 3, 64], { seed: 4 }), 0.05).to("cpu", "bfloat16");
    const run = async (algoReq?: "auto" | "direct" | "winograd") => {
      const y = ops.conv2d(x, w, { padding: 1, algo: algoReq });
      try { return await y.toFloat32Array(); } finally { y.dispose(); }
    };
    native().setConv2dAlgo("direct");
    const direct = await run();
    native().setConv2dAlgo("winograd");
    const wino = await run();
    native().setConv2dAlgo("auto");
    expect(Array.from(await run("direct"))).toEqual(Array.from(direct));
    expect(Array.from(await run("winograd"))).toEqual(Array.from(wino));
    expect(Array.from(await run())).toEqual(Array.from(wino));  // 2*6*6 = 72 tiles, 64 channels: auto is Winograd
    expect(Array.from(wino)).not.toEqual(Array.from(direct));
    expect(() => ops.conv2d(x, w, { padding: 1, algo: "fast" as "auto" })).toThrow(/algo must be "auto", "direct" or "winograd", got "fast"/);
    x.dispose();
    w.dispose();
  });

  test("AutoencoderKL's convolutions ask for the direct path in bf16; the U-Net's do not", () => {
    const { AutoencoderKL } = require("../../lib/models/autoencoder-kl") as typeof import("../../lib/models/autoencoder-kl");
    const { Conv2d } = require("../../lib/nn/layers") as typeof import("../../lib/nn/layers");
    const vae = new AutoencoderKL({ block_out_channels: [8, 8], down_block_types: ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D"], norm_num_groups: 4, latent_channels: 4 });
    const convs = vae.modules().filter((m) => m instanceof Conv2d) as InstanceType<typeof Conv2d>[];
    expect(convs.length).toBeGreaterThan(5);
    expect(convs.every((c) => !c.winogradBf16)).toBe(true);
    expect(new Conv2d(4, 4, { kernel: 3, padding: 1 }).winogradBf16).toBe(true);
  });

  test("forcing a path applies to bf16 too, and bad dtypes", () => {
    native().setConv2dAlgo("direct");
    expect(algo([2, 64, 64, 320], [320, 3, 3, 320])).toBe("direct");
    native().setConv2dAlgo("winograd");
    expect(algo([1, 4, 4, 3], [2, 3, 3, 3])).toBe("winograd");
    expect(algo([1, 4, 4, 3], [2, 3, 3, 3], 2)).toBe("direct");
    native().setConv2dAlgo("auto");
    expect(() => native().conv2dAlgo([1, 4, 4, 3], [2, 3, 3, 3], [1, 1], [1, 1], [1, 1], "float16" as "bfloat16")).toThrow(/dtype/);
  });
});
