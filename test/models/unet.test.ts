// UNet2DConditionModel vs diffusers 0.27.2 on the tiny-sd U-Net (every case of cases/unet.safetensors,
// output and every hooked activation), config errors, and full-size SD1.5/SD2.1 parameter counts.
import * as fs from "fs";
import * as path from "path";
import { Tensor, memoryStats, synchronize, tidy } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { UNet2DConditionModel, UnsupportedConfigError, resolveUNetConfig } from "../../lib/models/unet-2d-condition";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, SafetensorsSource, TOLERANCE, captureHooks, compareTensor, refTensor } from "./sd-helpers";

const readJson = (...p: string[]) => JSON.parse(fs.readFileSync(referencePath(...p), "utf8"));

/** Groups hook names for the report: attention internals, then the top-level part. */
function component(hook: string): string {
  if (hook.includes(".attentions.")) return "transformer internals";
  if (hook.startsWith("time_")) return "time embedding";
  const m = /^(down_blocks|up_blocks)\.\d+/.exec(hook);
  return m ? m[1] : hook;
}

describeIfReference("UNet2DConditionModel vs diffusers (tiny-sd)", () => {
  const log = new ErrorLog();
  let unet: UNet2DConditionModel;
  let cases: SafetensorsFile;
  const caseNames: string[] = [];

  beforeAll(() => {
    const dir = referencePath("models", "tiny-sd", "unet");
    unet = new UNet2DConditionModel(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")));
    const weights = SafetensorsFile.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    try { unet.loadStateDict(new SafetensorsSource(weights)); } finally { weights.close(); }
    cases = SafetensorsFile.open(referencePath("cases", "unet.safetensors"));
    for (const c of readJson("cases", "components_manifest.json").unet.cases) caseNames.push(c.case);
  });
  afterAll(() => {
    unet?.dispose();
    cases?.close();
    process.stderr.write(log.report("UNet (tiny-sd)") + "\n");
  });

  test("loads every checkpoint tensor and declares the diffusers parameter count", () => {
    expect(unet.parameterCount()).toBe(2_164_452);
    expect(unet.namedParameters().length).toBe(494);
  });

  test("the manifest lists the five cases", () => {
    expect(caseNames).toEqual(["b1_t999", "b2_t500", "b2_t1_t750", "b1_t1_nonsquare_8x24", "b1_tfloat_333.25"]);
  });

  for (const name of ["b1_t999", "b2_t500", "b2_t1_t750", "b1_t1_nonsquare_8x24", "b1_tfloat_333.25"]) {
    test(`case ${name}: output and every hooked activation`, async () => {
      const prefix = `${name}.act.`;
      const actNames = cases.keys().filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
      expect(actNames.length).toBeGreaterThan(30);
      const { hooks, captured } = captureHooks(actNames);
      const out = tidy(() => unet.forward(refTensor(cases, `${name}.sample`), refTensor(cases, `${name}.timestep`, true),
        refTensor(cases, `${name}.encoder_hidden_states`), { hooks }));
      const failures: string[] = [];
      try {
        const check = async (comp: string, label: string, t: Tensor, key: string) => {
          const err = await compareTensor(log, comp, `${name} ${label}`, t, cases.readFloat32(key), cases.info(key).shape);
          if (err > TOLERANCE) failures.push(`${label}: ${err.toExponential(2)}`);
        };
        await check("output", "output", out, `${name}.output`);
        for (const act of actNames) {
          const t = captured.get(act);
          if (!t) { failures.push(`${act}: never hooked`); continue; }
          await check(component(act), act, t, prefix + act);
        }
      } finally {
        out.dispose();
        for (const t of captured.values()) t.dispose();
      }
      expect(failures).toEqual([]);
    });
  }

  test("a number timestep and a broadcast 1-element timestep match the per-item tensor", async () => {
    const [a, b] = tidy(() => {
      const sample = refTensor(cases, "b2_t500.sample"), ehs = refTensor(cases, "b2_t500.encoder_hidden_states");
      return [unet.forward(sample, 500, ehs), unet.forward(sample, Tensor.fromArray(new Float32Array([500]), [1]), ehs)];
    });
    try {
      const ref = cases.readFloat32("b2_t500.output");
      for (const t of [a, b]) {
        const got = await t.toFloat32Array();
        let worst = 0;
        for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref[i]));
        expect(worst).toBeLessThanOrEqual(TOLERANCE * 3);
      }
    } finally { a.dispose(); b.dispose(); }
  });

  test("bad inputs are errors naming the argument", () => {
    tidy(() => {
      const ehs = Tensor.zeros([1, 77, 32]);
      expect(() => unet.forward(Tensor.zeros([1, 3, 16, 16]), 1, ehs)).toThrow(/sample must be \[B, 4, H, W\]/);
      expect(() => unet.forward(Tensor.zeros([2, 4, 8, 8]), Tensor.zeros([3]), Tensor.zeros([2, 77, 32]))).toThrow(/timestep must hold 1 or 2 values/);
      expect(() => unet.forward(Tensor.zeros([2, 4, 8, 8]), 1, ehs)).toThrow(/encoderHiddenStates must be \[2, M, D\]/);
    });
  });

  test("hooks change nothing, and a forward leaves no tensors behind", async () => {
    const run = (hooks?: (n: string, v: () => Tensor) => void) => tidy(() => unet.forward(refTensor(cases, "b2_t1_t750.sample"),
      refTensor(cases, "b2_t1_t750.timestep", true), refTensor(cases, "b2_t1_t750.encoder_hidden_states"), { hooks }));
    const warm = run();
    const plain = await warm.toFloat32Array();
    warm.dispose();
    await synchronize("cpu");
    const before = memoryStats("cpu").bytesInUse;
    const out = run();
    await out.toFloat32Array();
    out.dispose();
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBe(before);
    let calls = 0;
    const hooked = run((_n, v) => { calls++; v(); });
    try {
      expect(calls).toBeGreaterThan(100);
      expect(await hooked.toFloat32Array()).toEqual(plain);
    } finally { hooked.dispose(); }
  });

  test("use_linear_projection: Linear proj_in/proj_out on the same weights give the same output", async () => {
    const dir = referencePath("models", "tiny-sd", "unet");
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    const linear = new UNet2DConditionModel({ ...cfg, use_linear_projection: true });
    const weights = SafetensorsFile.open(path.join(dir, "diffusion_pytorch_model.safetensors"));
    const src = new SafetensorsSource(weights);
    const isProj = (k: string) => /\.proj_(in|out)\.weight$/.test(k);
    try {
      linear.loadStateDict({
        keys: () => src.keys(),
        shape: (k) => isProj(k) ? src.shape(k).slice(0, 2) : src.shape(k),
        load: (k, o) => { const t = src.load(k, o); if (!isProj(k)) return t; const v = t.reshape(t.shape.slice(0, 2)); t.dispose(); return v; },
      });
    } finally { weights.close(); }
    const out = tidy(() => linear.forward(refTensor(cases, "b1_t999.sample"), 999, refTensor(cases, "b1_t999.encoder_hidden_states")));
    try {
      const err = await compareTensor(log, "output (linear projection)", "b1_t999 output", out, cases.readFloat32("b1_t999.output"), [1, 4, 16, 16]);
      expect(err).toBeLessThanOrEqual(TOLERANCE);
    } finally { out.dispose(); linear.dispose(); }
  });

  test("sizes that do not divide by 2^levels go through (upsampler output sized to the skip)", async () => {
    const out = tidy(() => unet.forward(Tensor.randn([1, 4, 6, 10], { seed: 3 }), 10, Tensor.randn([1, 77, 32], { seed: 4 })));
    try {
      expect([...out.shape]).toEqual([1, 4, 6, 10]);
      expect((await out.toFloat32Array()).every(Number.isFinite)).toBe(true);
    } finally { out.dispose(); }
  });
});

describeIfReference("UNet2DConditionModel configs", () => {
  test.each([["sd15"], ["sd21"]])("%s: the full-size U-Net declares diffusers' parameter count", (which) => {
    const counts = readJson("configs", "param_counts.json");
    const unet = new UNet2DConditionModel(readJson("configs", which, "unet", "config.json"));
    expect(unet.parameterCount()).toBe(counts[`${which}/unet/config.json`]);
  });

  test("SD2.1's attention_head_dim list is read as head counts, with linear projections", () => {
    const cfg = resolveUNetConfig(readJson("configs", "sd21", "unet", "config.json"));
    expect(cfg.numAttentionHeads).toEqual([5, 10, 20, 20]);
    expect(cfg.useLinearProjection).toBe(true);
    expect(cfg.upcastAttention).toBe(true);
    const unet = new UNet2DConditionModel(readJson("configs", "sd21", "unet", "config.json"));
    const names = unet.namedParameterSpecs().map(([n, s]) => `${n}:${s.shape.join("x")}`);
    expect(names).toContain("down_blocks.0.attentions.0.proj_in.weight:320x320");
    expect(names).toContain("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight:320x1024");
  });

  test("SD1.5 has conv projections and 8 heads everywhere", () => {
    const unet = new UNet2DConditionModel(readJson("configs", "sd15", "unet", "config.json"));
    const names = unet.namedParameterSpecs().map(([n, s]) => `${n}:${s.shape.join("x")}`);
    expect(names).toContain("mid_block.attentions.0.proj_out.weight:1280x1280x1x1");
    expect(unet.midBlock!.attentions[0].blocks[0].attn1.heads).toBe(8);
    expect(unet.midBlock!.attentions[0].blocks[0].attn1.dimHead).toBe(160);
  });

  test("values that change the math are errors naming the key", () => {
    const base = readJson("models", "tiny-sd", "unet", "config.json");
    const bad: [Record<string, unknown>, string][] = [
      [{ addition_embed_type: "image" }, "addition_embed_type"],
      [{ down_block_types: ["AttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"] }, "down_block_types"],
      [{ up_block_types: ["UpBlock2D", "SimpleCrossAttnUpBlock2D", "CrossAttnUpBlock2D"] }, "up_block_types"],
      [{ mid_block_type: "UNetMidBlock2DSimpleCrossAttn" }, "mid_block_type"],
      [{ class_embed_type: "timestep" }, "class_embed_type"],
      [{ time_embedding_type: "fourier" }, "time_embedding_type"],
      [{ act_fn: "gelu" }, "act_fn"],
      [{ resnet_time_scale_shift: "scale_shift" }, "resnet_time_scale_shift"],
      [{ num_attention_heads: 8 }, "num_attention_heads"],
      [{ only_cross_attention: true }, "only_cross_attention"],
      [{ encoder_hid_dim_type: "text_proj", encoder_hid_dim: 32 }, "encoder_hid_dim"],
      [{ time_cond_proj_dim: 256 }, "time_cond_proj_dim"],
    ];
    for (const [patch, key] of bad) {
      let err: unknown;
      try { new UNet2DConditionModel({ ...base, ...patch }); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(UnsupportedConfigError);
      expect((err as UnsupportedConfigError).key).toBe(key);
      expect((err as Error).message).toContain(`"${key}"`);
    }
    expect(() => new UNet2DConditionModel({ ...base, block_out_channels: [32, 64] })).toThrow(/block_out_channels/);
    expect(() => new UNet2DConditionModel({ ...base, attention_head_dim: [8, 8] })).toThrow(/attention_head_dim/);
  });

  test("addition_embed_type: text_time (SDXL) builds; other kinds, or text_time without its sizes, are refused by name", () => {
    const xl = readJson("models", "tiny-sdxl", "unet", "config.json");
    new UNet2DConditionModel(xl).dispose();
    expect(() => new UNet2DConditionModel({ ...xl, addition_embed_type: "text_image" })).toThrow(/addition_embed_type/);
    expect(() => new UNet2DConditionModel({ ...xl, addition_time_embed_dim: null })).toThrow(/needs addition_time_embed_dim and projection_class_embeddings_input_dim/);
  });
});
