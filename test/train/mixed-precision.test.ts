// Mixed precision (mixedPrecision: "bf16"): the network runs on bfloat16 copies of its float32
// master weights (Module.withParametersAs), the float32-only backward kernels take upcast
// bfloat16 tensors (autograd's float32Call), and the gradients reach the float32 weights close to
// the float32 ones; train() and trainVae() with it lower the loss like float32 training, and a
// stopped run resumes bit for bit.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor, tidy } from "../../lib/tensor";
import * as ops from "../../lib/ops";
import { backward, liveNodeCount, zeroGrad } from "../../lib/autograd";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import { initParameters } from "../../lib/train/init";
import { unetConfig } from "../../lib/train/presets";
import { createShapesDataset } from "../../lib/train/shapes";
import { train } from "../../lib/train/trainer";
import { trainVae } from "../../lib/train/vae-trainer";

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-mp-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const quiet = { handleSigint: false, onWarn: () => undefined };

describe("bf16 compute, float32 master weights", () => {
  test("a UNet's loss and every parameter gradient under withParametersAs('bfloat16') match float32 within bf16 rounding", async () => {
    const cfg = unetConfig("small", { latentChannels: 4, crossAttentionDim: 32, sampleSize: 8 });
    const unet = new UNet2DConditionModel(cfg);
    initParameters(unet, 3, "unet");
    unet.setRequiresGrad();
    const x = Tensor.randn([2, 4, 8, 8], { seed: 1 }), ctx = Tensor.randn([2, 7, 32], { seed: 2 }), target = Tensor.randn([2, 4, 8, 8], { seed: 3 });
    const t = Tensor.fromArray(Float32Array.from([10, 700]), [2]);
    const params = unet.namedParameters();
    const run = async (bf16: boolean) => {
      const loss = tidy(() => {
        const pred = bf16 ? unet.withParametersAs("bfloat16", () => unet.forward(x.to("cpu", "bfloat16"), t, ctx).to("cpu", "float32")) : unet.forward(x, t, ctx);
        return ops.mean(ops.square(ops.sub(pred, target)));
      });
      backward(loss);
      const l = (await loss.toFloat32Array())[0];
      loss.dispose();
      const grads: Float32Array[] = [];
      for (const [name, p] of params) {
        expect([name, p.dtype, p.grad?.dtype]).toEqual([name, "float32", "float32"]);
        grads.push(await p.grad!.toFloat32Array());
      }
      zeroGrad(params.map(([, p]) => p));
      return { l, grads };
    };
    const nodes0 = liveNodeCount();
    const f32 = await run(false), b16 = await run(true);
    expect(liveNodeCount()).toBe(nodes0);
    expect(params.every(([, p]) => p.dtype === "float32")).toBe(true);  // the masters are back
    expect(Math.abs(b16.l - f32.l) / f32.l).toBeLessThan(2e-2);
    let dot = 0, na = 0, nb = 0, worst = 0, differ = 0;
    f32.grads.forEach((a, i) => {
      const b = b16.grads[i];
      let d2 = 0, a2 = 0;
      for (let k = 0; k < a.length; k++) {
        dot += a[k] * b[k]; na += a[k] * a[k]; nb += b[k] * b[k];
        d2 += (a[k] - b[k]) ** 2; a2 += a[k] * a[k];
        if (a[k] !== b[k]) differ++;
      }
      if (a2 > 0) worst = Math.max(worst, Math.sqrt(d2 / a2));
    });
    const cos = dot / Math.sqrt(na * nb);
    process.stderr.write(`bf16 vs float32 UNet gradients: loss ${f32.l.toFixed(5)} / ${b16.l.toFixed(5)}, cosine ${cos.toFixed(6)}, worst tensor rel-L2 ${worst.toExponential(2)}\n`);
    expect(differ).toBeGreaterThan(0);  // bf16 really ran
    expect(cos).toBeGreaterThan(0.999);
    expect(worst).toBeLessThan(0.1);
    expect(() => unet.withParametersAs("int32", () => 0)).toThrow(/dtype must be "float32", "float16" or "bfloat16"/);
    expect(() => unet.withParametersAs("bfloat16", () => { throw new Error("inside"); })).toThrow("inside");
    const after = unet.namedParameters();  // the very same float32 tensors are back, after a throw too
    expect(after.length).toBe(params.length);
    expect(after.every(([, p], i) => p === params[i][1] && p.dtype === "float32")).toBe(true);
    for (const h of [x, ctx, target, t]) h.dispose();
    unet.dispose();
  });

  test("train() and trainVae() with mixedPrecision 'bf16' lower the loss and start where float32 does; resume is exact", async () => {
    const ds = createShapesDataset({ count: 16, resolution: 32, seed: 0 });
    const vaeOpts = { ...quiet, data: ds, resolution: 32, blockOutChannels: [16, 32, 32], steps: 20, batchSize: 8, lr: 2e-3, seed: 1 };
    const v32 = await trainVae({ ...vaeOpts, out: path.join(tmp, "vae32") });
    const v16 = await trainVae({ ...vaeOpts, out: path.join(tmp, "vae16"), mixedPrecision: "bf16" });
    expect(Math.abs(v16.losses[0] - v32.losses[0]) / v32.losses[0]).toBeLessThan(1e-2);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(v16.losses.slice(-5))).toBeLessThan(0.6 * mean(v16.losses.slice(0, 5)));

    const opts = { ...quiet, data: ds, resolution: 32, vae: path.join(tmp, "vae32"), steps: 20, batchSize: 8, lr: 1e-3, seed: 2 };
    const u32 = await train({ ...opts, out: path.join(tmp, "unet32") });
    const u16 = await train({ ...opts, out: path.join(tmp, "unet16"), mixedPrecision: "bf16" });
    expect(u16.losses[0]).not.toBe(u32.losses[0]);
    expect(Math.abs(u16.losses[0] - u32.losses[0]) / u32.losses[0]).toBeLessThan(1e-2);
    expect(mean(u16.losses.slice(-5))).toBeLessThan(0.85 * mean(u16.losses.slice(0, 5)));
    // the exported weights are float32 (the masters), as without mixed precision
    const st = fs.readFileSync(path.join(tmp, "unet16", "unet", "diffusion_pytorch_model.safetensors"));
    const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString("utf8")) as Record<string, { dtype?: string }>;
    expect(new Set(Object.entries(header).filter(([k]) => k !== "__metadata__").map(([, v]) => v.dtype))).toEqual(new Set(["F32"]));

    await expect(train({ ...opts, out: path.join(tmp, "bad"), mixedPrecision: "fp8" as never })).rejects.toThrow(/mixedPrecision must be "no" or "bf16"/);

    // resume stays exact under mixed precision: 6 steps straight == 3, stop, resume 3 (with gradient accumulation)
    const rs = { ...opts, steps: 6, gradAccum: 2, mixedPrecision: "bf16" as const };
    const straight = await train({ ...rs, out: path.join(tmp, "straight") });
    const ac = new AbortController();
    await train({ ...rs, out: path.join(tmp, "resumed"), signal: ac.signal, onLog: (i) => { if (i.step === 3) ac.abort(); } });
    const resumed = await train({ ...rs, out: path.join(tmp, "resumed"), resume: true });
    expect(resumed.step).toBe(6);
    expect(resumed.losses).toEqual(straight.losses.slice(3));
    const weights = (d: string) => fs.readFileSync(path.join(tmp, d, "unet", "diffusion_pytorch_model.safetensors"));
    expect(weights("resumed").equals(weights("straight"))).toBe(true);
  });
});
