// LoCon: LoRA branches on 3x3 convolutions. A Conv2d's branch and its gradients against float64
// formulas; a U-Net with trained linear and conv branches computes what the saved kohya file,
// merged by loadLora, makes the plain U-Net compute (so the file's layouts are right); train()
// with convRank starts from the base loss and writes conv keys; the options are checked.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { backward, rawNative } from "../../lib/autograd";
import { Conv2d } from "../../lib/nn/layers";
import { TensorMapSource } from "../../lib/nn/module";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { loadPipeline } from "../../lib/pipelines/load";
import { LoraAdapters } from "../../lib/train/lora-adapters";
import { train } from "../../lib/train/trainer";
import { createShapesDataset } from "../../lib/train/shapes";
import { parseTrainArgs } from "../../lib/cli/train";
import { randn, toF32 } from "../helpers/naive";

const BUILTIN = path.resolve(__dirname, "../../models/builtin");
const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-locon-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test("Conv2d with a branch: y = conv(x, W) + b + s·conv1x1(conv(x, D), U), and the gradients of D and U (stride 2, padding 1)", async () => {
  const [N, H, Wd, C, O, R, K, S, P] = [2, 5, 6, 3, 4, 2, 3, 2, 1];
  const Ho = Math.floor((H + 2 * P - K) / S) + 1, Wo = Math.floor((Wd + 2 * P - K) / S) + 1;
  const x = toF32(randn([N, H, Wd, C], 1)), W = toF32(randn([O, C, K, K], 2, 0.3)), b = toF32(randn([O], 3, 0.1));
  const Dm = toF32(randn([R, K, K, C], 4, 0.3)), U = toF32(randn([O, R], 5, 0.3)), g = toF32(randn([N, Ho, Wo, O], 6));
  const s = 0.75;
  const conv = new Conv2d(C, O, { kernel: K, stride: S, padding: P });
  conv.loadStateDict(new TensorMapSource(new Map([["weight", Tensor.fromArray(W, [O, C, K, K])], ["bias", Tensor.fromArray(b, [O])]])));
  const down = Tensor.fromArray(Dm, [R, K, K, C]), up = Tensor.fromArray(U, [O, R]);
  down.requiresGrad = true;
  up.requiresGrad = true;
  conv.adapter = { down, up, scale: s };
  const y = tidy(() => conv.forward(Tensor.fromArray(x, [N, H, Wd, C])));
  const loss = tidy(() => ops.sum(ops.mul(y, Tensor.fromArray(g, [N, Ho, Wo, O]))));
  backward(loss);
  const [yv, gd, gu] = [await y.toFloat32Array(), await down.grad!.toFloat32Array(), await up.grad!.toFloat32Array()];
  // float64: xi(n, p, q, ky, kx, c) is the input under tap (ky, kx) of output (p, q), 0 in the padding
  const xi = (n: number, p: number, q: number, ky: number, kx: number, c: number) => {
    const yy = p * S - P + ky, xx = q * S - P + kx;
    return yy < 0 || yy >= H || xx < 0 || xx >= Wd ? 0 : x[((n * H + yy) * Wd + xx) * C + c];
  };
  const h = (n: number, p: number, q: number, r: number) => {  // the branch's first conv, [R] channels
    let a = 0;
    for (let ky = 0; ky < K; ky++) for (let kx = 0; kx < K; kx++) for (let c = 0; c < C; c++) a += xi(n, p, q, ky, kx, c) * Dm[((r * K + ky) * K + kx) * C + c];
    return a;
  };
  let worstY = 0, worstD = 0, worstU = 0;
  const gU = new Float64Array(O * R), gD = new Float64Array(R * K * K * C);
  for (let n = 0; n < N; n++) for (let p = 0; p < Ho; p++) for (let q = 0; q < Wo; q++) {
    const hs = Array.from({ length: R }, (_, r) => h(n, p, q, r));
    for (let o = 0; o < O; o++) {
      let v = b[o];
      for (let ky = 0; ky < K; ky++) for (let kx = 0; kx < K; kx++) for (let c = 0; c < C; c++) v += xi(n, p, q, ky, kx, c) * W[((o * C + c) * K + ky) * K + kx];
      for (let r = 0; r < R; r++) v += s * hs[r] * U[o * R + r];
      const i = ((n * Ho + p) * Wo + q) * O + o;
      worstY = Math.max(worstY, Math.abs(v - yv[i]));
      for (let r = 0; r < R; r++) {
        gU[o * R + r] += s * g[i] * hs[r];
        for (let ky = 0; ky < K; ky++) for (let kx = 0; kx < K; kx++) for (let c = 0; c < C; c++)
          gD[((r * K + ky) * K + kx) * C + c] += s * g[i] * U[o * R + r] * xi(n, p, q, ky, kx, c);
      }
    }
  }
  gU.forEach((v, i) => { worstU = Math.max(worstU, Math.abs(v - gu[i])); });
  gD.forEach((v, i) => { worstD = Math.max(worstD, Math.abs(v - gd[i])); });
  expect([worstY, worstD, worstU].every((e) => e < 1e-4)).toBe(true);
  for (const t of [y, loss, down, up]) t.dispose();
  conv.dispose();
});

test("trained linear and conv branches = the saved kohya file merged by loadLora (layouts round-trip)", async () => {
  const pipe = await loadPipeline(BUILTIN, { device: "cpu" });
  const base = await loadPipeline(BUILTIN, { device: "cpu" });
  const adapters = new LoraAdapters(pipe.unet, { rank: 2, alpha: 3, convRank: 3, convAlpha: 1.5, seed: 1, device: "cpu" });
  try {
    // trained-looking branches: every down and up random (up starts at zero)
    adapters.params().forEach(([, t], i) => {
      const r = Tensor.randn([...t.shape], { seed: 50 + i });
      const v = ops.mul(r, 0.05);
      rawNative().copyInPlace(t.handle, v.handle);
      r.dispose();
      v.dispose();
    });
    const sample = Tensor.randn([1, 4, 16, 16], { seed: 7 }), ctx = await pipe.encodePrompt("a red apple");
    const withBranches = await pipe.unet.forward(sample, 500, ctx).toFloat32Array();
    const file = path.join(tmp, "locon.safetensors");
    await adapters.save(file);
    const f = SafetensorsFile.open(file);
    const conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    expect(f.info(`${conv}.lora_down.weight`).shape).toEqual([3, pipe.unet.config.blockOutChannels[0], 3, 3]);
    expect(f.info(`${conv}.lora_up.weight`).shape).toEqual([pipe.unet.config.blockOutChannels[0], 3, 1, 1]);
    expect(f.readFloat32(`${conv}.alpha`)[0]).toBe(1.5);
    expect(JSON.parse(f.metadata.ss_network_args)).toEqual({ conv_dim: "3", conv_alpha: "1.5" });
    f.close();
    const applied = base.loadLora(file);
    expect(applied.layers.unet).toBe(adapters.layers);
    const merged = await base.unet.forward(sample, 500, ctx).toFloat32Array();
    adapters.detach();
    const plain = await pipe.unet.forward(sample, 500, ctx).toFloat32Array();
    let diff = 0, moved = 0, ref = 0;
    for (let i = 0; i < merged.length; i++) {
      diff = Math.max(diff, Math.abs(merged[i] - withBranches[i]));
      moved = Math.max(moved, Math.abs(plain[i] - withBranches[i]));
      ref = Math.max(ref, Math.abs(withBranches[i]));
    }
    expect(moved).toBeGreaterThan(1e-2 * ref);        // the branches matter
    expect(diff).toBeLessThan(1e-4 * Math.max(1, ref)); // and the merged file computes the same
    for (const t of [sample, ctx]) t.dispose();
  } finally {
    adapters.dispose();
    pipe.dispose();
    base.dispose();
  }
});

test("train({ lora: { convRank } }): the base loss at step 0, conv branches in the file; options and CLI flags checked", async () => {
  const ds = createShapesDataset({ count: 8, resolution: 64, seed: 0 });
  const run = (out: string, lora: Record<string, unknown>) => train({ ...quiet, data: ds, out: path.join(tmp, out), init: BUILTIN, resolution: 64, steps: 2, batchSize: 2, seed: 3, lr: 1e-3, lora });
  const plain = await run("plain", { rank: 2 });
  const locon = await run("locon", { rank: 2, convRank: 4 });
  expect(locon.losses[0]).toBe(plain.losses[0]);
  expect(locon.parameters.lora!).toBeGreaterThan(plain.parameters.lora!);
  const f = SafetensorsFile.open(locon.loraFile!);
  const convKeys = f.keys().filter((k) => /_conv[12]\.lora_down\.weight$|samplers_0_conv\.lora_down\.weight$/.test(k));
  f.close();
  expect(convKeys.length).toBeGreaterThan(0);
  await expect(run("x1", { rank: 2, convRank: 0 })).rejects.toThrow(/lora.convRank must be an integer in \[1, 1024\]/);
  await expect(run("x2", { rank: 2, convAlpha: 2 })).rejects.toThrow(/lora.convAlpha goes with lora.convRank/);
  await expect(run("x3", { rank: 2, convDim: 2 })).rejects.toThrow(/lora has no option "convDim"/);
  expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--lora-conv-rank", "8", "--lora-conv-alpha", "4"]))
    .toEqual({ data: "d", out: "o", init: "m", lora: { convRank: 8, convAlpha: 4 } });
});
