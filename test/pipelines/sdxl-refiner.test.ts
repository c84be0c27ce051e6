// The SDXL refiner layout (diffusers' StableDiffusionXLImg2ImgPipeline with text_encoder/tokenizer
// [null, null], requires_aesthetics_score): a tiny refiner made from tiny-sdxl's second encoder and
// VAE and a U-Net whose add_embedding takes 5 ids + the pooled text. Its one encoder conditions the
// U-Net (penultimate states, projected pooled output); the ids are size, crop and the aesthetic
// score, the negative score on CFG's negative rows; what the refiner cannot do is refused.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import { initParameters } from "../../lib/train/init";
import { writeModuleWeights } from "../../lib/io/module-weights";
import { GENERATE_KEYS, resolveCommon } from "../../lib/pipelines/text-to-image";
import { encodeConditioningXL } from "../../lib/pipelines/sdxl-conditioning";
import { Tensor, tidy } from "../../lib/tensor";
import { train } from "../../lib/train/trainer";
import { describeIfReference, referencePath } from "../helpers/reference";
import { encodePNG } from "../../lib/pipelines/images";
import { assertBuilt, runCli } from "../cli/run";

describeIfReference("the SDXL refiner (a tiny one built from tiny-sdxl's parts)", () => {
  let tmp: string, dir: string, pipe: StableDiffusionPipeline;
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-refiner-"));
    dir = path.join(tmp, "tiny-refiner");
    const src = referencePath("models", "tiny-sdxl");
    for (const c of ["scheduler", "vae", "text_encoder_2", "tokenizer_2"]) fs.cpSync(path.join(src, c), path.join(dir, c), { recursive: true });
    const base = JSON.parse(fs.readFileSync(path.join(src, "unet", "config.json"), "utf8"));
    // the refiner's U-Net: cross-attention on the second encoder alone (24), 5 ids x 8 + the 32-wide projection
    const config = { ...base, cross_attention_dim: 24, projection_class_embeddings_input_dim: 5 * 8 + 32 };
    const unet = new UNet2DConditionModel(config);
    initParameters(unet, 7, "refiner");
    fs.mkdirSync(path.join(dir, "unet"));
    await writeModuleWeights(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"), unet, { dtype: "float32" });
    unet.dispose();
    fs.writeFileSync(path.join(dir, "unet", "config.json"), JSON.stringify(config));
    const index = JSON.parse(fs.readFileSync(path.join(src, "model_index.json"), "utf8"));
    fs.writeFileSync(path.join(dir, "model_index.json"), JSON.stringify({
      ...index, _class_name: "StableDiffusionXLImg2ImgPipeline", text_encoder: [null, null], tokenizer: [null, null],
      requires_aesthetics_score: true, force_zeros_for_empty_prompt: false,
    }));
    pipe = await loadPipeline(dir, { device: "cpu" });
  });
  afterAll(() => {
    pipe?.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test("it loads as a refiner; its one encoder gives the penultimate states and the projected pooled output", async () => {
    expect([pipe.isXL, pipe.isRefiner, pipe.textEncoder2, pipe.forceZerosForEmptyPrompt]).toEqual([true, true, null, false]);
    expect(pipe.textEncoder.config.projectionDim).toBe(32);
    const { embeds, pooled } = await pipe.encodePromptXL("a red circle");
    const ids = Tensor.fromArray(Int32Array.from(pipe.tokenizer.encodePadded("a red circle")), [1, 77]);
    const direct = tidy(() => pipe.textEncoder.forward(ids, { outputHiddenStates: true }));
    const L = pipe.textEncoder.config.numHiddenLayers;
    expect(await embeds.toFloat32Array()).toEqual(await direct.hiddenStates![L - 1].toFloat32Array());
    expect(await pooled.toFloat32Array()).toEqual(await direct.textEmbeds!.toFloat32Array());
    for (const t of [embeds, pooled, ids, direct.lastHiddenState, direct.pooled, direct.textEmbeds!, ...direct.hiddenStates!]) t.dispose();
  });

  test("five ids per row: size, crop and the aesthetic score, the negative score on CFG's negative rows", async () => {
    const run = resolveCommon(pipe, { prompt: ["a", "b"], cfg: 5, aestheticScore: 7, originalSize: { width: 96, height: 80 }, cropTopLeft: { top: 8, left: 4 } }, "generate", GENERATE_KEYS);
    try {
      const cond = encodeConditioningXL(pipe, run, 64, 64);
      const ids = await cond.added!.timeIds.toFloat32Array();
      expect(cond.added!.timeIds.shape).toEqual([4, 5]);
      expect(Array.from(ids)).toEqual([80, 96, 8, 4, 2.5, 80, 96, 8, 4, 2.5, 80, 96, 8, 4, 7, 80, 96, 8, 4, 7]);
      for (const t of [cond.context, cond.added!.textEmbeds, cond.added!.timeIds]) t.dispose();
    } finally {
      run.scheduler.dispose();
    }
  });

  test("img2img refines (diffusers' default strength 0.3); the scores reach the U-Net, the negative one only under CFG", async () => {
    const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 37) % 256) };
    const px = async (o: Record<string, unknown>) => Buffer.from((await pipe.img2img({ prompt: "a red circle", image, steps: 10, seed: 2, ...o })).images[0].data);
    const plain = await px({ cfg: 5 });
    expect((await px({ cfg: 5, aestheticScore: 6 })).equals(plain)).toBe(true);  // 6 is the default
    expect((await px({ cfg: 5, aestheticScore: 9 })).equals(plain)).toBe(false);
    expect((await px({ cfg: 5, negativeAestheticScore: 1 })).equals(plain)).toBe(false);
    expect((await px({ cfg: 1, negativeAestheticScore: 1 })).equals(await px({ cfg: 1 }))).toBe(true);
    expect((await pipe.generate({ prompt: "a red circle", steps: 2, seed: 1, width: 64, height: 64 })).images).toHaveLength(1);
  });

  test("the ensemble of experts: the base model to 0.8, the refiner from its latents for the rest", async () => {
    const base = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    try {
      const steps: number[][] = [[], []];
      const opts = { prompt: "a red circle", steps: 10, seed: 4, width: 64, height: 64 };
      const head = await base.generate({ ...opts, denoisingEnd: 0.8, outputType: "latent", onStep: (x) => { steps[0].push(x.timestep); } });
      const r = await pipe.img2img({ prompt: opts.prompt, steps: 10, seed: 4, initLatents: head.latents!, denoisingStart: 0.8, onStep: (x) => { steps[1].push(x.timestep); } });
      expect([r.images[0].width, r.images[0].height]).toEqual([64, 64]);
      expect(steps[0].length + steps[1].length).toBe(10);
      expect(Math.max(...steps[1])).toBeLessThan(Math.min(...steps[0]));
    } finally {
      base.dispose();
    }
  });

  test("the CLI: --aesthetic-score on the refiner; on another model a one-line usage error", () => {
    assertBuilt();
    const png = path.join(tmp, "in.png");
    fs.writeFileSync(png, encodePNG({ width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(128) }));
    const r = runCli(["img2img", png, "a red circle", "--model", dir, "--steps", "4", "--aesthetic-score", "7", "--negative-aesthetic-score", "2", "-q", "-o", path.join(tmp, "o.png")]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    const bad = runCli(["generate", "a red apple", "--aesthetic-score", "6", "-q", "-o", path.join(tmp, "b.png")]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^diffusekit: generate: aestheticScore is for SDXL models/);
    expect(runCli(["generate", "x", "--aesthetic-score", "high"]).stderr).toMatch(/Expected a finite number/);
  });

  test("refused for the refiner: prompt2 and targetSize, prompt weighting, embeddings, saving, training; aesthetic scores on a base model", async () => {
    const opts = { prompt: "a red circle", steps: 1, width: 64, height: 64 };
    await expect(pipe.generate({ ...opts, prompt2: "x" })).rejects.toThrow(/prompt2 does not apply to the SDXL refiner/);
    await expect(pipe.generate({ ...opts, targetSize: { width: 64, height: 64 } })).rejects.toThrow(/targetSize does not apply to the SDXL refiner/);
    await expect(pipe.generate({ ...opts, promptWeighting: true })).rejects.toThrow(/promptWeighting is not supported for the SDXL refiner/);
    await expect(pipe.generate({ ...opts, aestheticScore: Infinity })).rejects.toThrow(/aestheticScore must be a finite number/);
    expect(() => pipe.loadTextualInversion(path.join(tmp, "x.safetensors"))).toThrow(/not supported for the SDXL refiner/);
    await expect(pipe.save(path.join(tmp, "saved"))).rejects.toThrow(/saving the SDXL refiner is not supported/);
    await expect(train({ handleSigint: false, data: "shapes:4", out: path.join(tmp, "t"), init: dir, steps: 1 })).rejects.toThrow(/an SDXL refiner .* cannot be trained here/);
    const base = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    try {
      await expect(base.generate({ ...opts, aestheticScore: 6 })).rejects.toThrow(/aestheticScore condition the SDXL refiner; this is an SDXL base model/);
    } finally {
      base.dispose();
    }
  });
});
