// loadPipeline from a single-file checkpoint (tiny-sd written in original LDM key names) gives the
// folder pipeline's images; its errors (no tokenizer, unknown family, SDXL folders); the built-in
// SD1.5 / SD2.1 configs; createRandomPipeline (seeded weights, norms at 1/0, byte-level tokenizer).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { memoryStats, synchronize } from "../../lib";
import { UNet2DConditionModel } from "../../lib/models/unet-2d-condition";
import { CLIPTextModel } from "../../lib/models/clip-text";
import { AutoencoderKL } from "../../lib/models/autoencoder-kl";
import { loadPipeline, createRandomPipeline, builtinConfigDir, byteLevelTokenizer, type StableDiffusionPipeline } from "../../lib/pipelines";
import { describeIfReference, referencePath } from "../helpers/reference";
import { writeSingleFile } from "./pipeline-helpers";

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);
const readJson = (f: string) => JSON.parse(fs.readFileSync(f, "utf8")) as Record<string, unknown>;

test("the built-in SD1.5 / SD2.1 configs ship at the package root and build the published models", () => {
  for (const [fam, unetParams, textParams] of [["sd1", 859_520_964, 123_060_480], ["sd2", 865_910_724, 340_387_840]] as const) {
    const dir = builtinConfigDir(fam);
    for (const f of ["unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"])
      expect(fs.existsSync(path.join(dir, f))).toBe(true);
    expect(new UNet2DConditionModel(readJson(path.join(dir, "unet/config.json"))).parameterCount()).toBe(unetParams);
    expect(CLIPTextModel.fromConfig(readJson(path.join(dir, "text_encoder/config.json"))).parameterCount()).toBe(textParams);
  }
});

test("configs/sdxl builds SDXL base 1.0: U-Net, both text encoders and the VAE have its parameter counts", () => {
  const dir = path.join(__dirname, "..", "..", "configs", "sdxl");
  const cfg = (f: string) => readJson(path.join(dir, f));
  expect(new UNet2DConditionModel(cfg("unet/config.json")).parameterCount()).toBe(2_567_463_684);
  expect(CLIPTextModel.fromConfig(cfg("text_encoder/config.json")).parameterCount()).toBe(123_060_480);
  const te2 = CLIPTextModel.fromConfig(cfg("text_encoder_2/config.json"));
  expect([te2.parameterCount(), te2.config.projectionDim]).toEqual([694_659_840, 1280]);
  expect(new AutoencoderKL(cfg("vae/config.json")).parameterCount()).toBe(83_653_863);
  expect(cfg("model_index.json")._class_name).toBe("StableDiffusionXLPipeline");
});

test("the byte-level fallback tokenizer pads to 77 with CLIP's special ids", () => {
  const t = byteLevelTokenizer();
  const ids = t.encodePadded("hi!");
  expect(ids.length).toBe(77);
  // "hi" and "!" are two words: h, i</w>, !</w>
  expect(ids.slice(0, 6)).toEqual([49406, "h".charCodeAt(0), 256 + "i".charCodeAt(0), 256 + "!".charCodeAt(0), 49407, 49407]);
});

describeIfReference("loadPipeline and createRandomPipeline (tiny-sd)", () => {
  let tmp: string;
  let folderPipe: StableDiffusionPipeline;
  let single: string;
  const tiny = () => referencePath("models", "tiny-sd");
  const opts = { prompt: "a dog on a skateboard", negativePrompt: "ugly", width: 32, height: 32, steps: 2, sampler: "euler-a", seed: 9 };

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-load-"));
    folderPipe = await loadPipeline(tiny(), { device: "cpu" });
    // tiny-sd as one original-format checkpoint
    single = path.join(tmp, "tiny-sd.safetensors");
    writeSingleFile(tiny(), single);
  });
  afterAll(() => {
    folderPipe?.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test("a single-file checkpoint with configs + tokenizer gives the folder's images", async () => {
    const want = await folderPipe.generate(opts);
    const p = await loadPipeline(single, { device: "cpu", configs: tiny(), tokenizer: path.join(tiny(), "tokenizer") });
    try {
      expect(p.modelName).toBe("tiny-sd");
      const got = await p.generate(opts);
      expect(same(got.images[0].data, want.images[0].data)).toBe(true);
    } finally {
      p.dispose();
    }
    // the configs folder's tokenizer/ is used when no tokenizer is given
    const p2 = await loadPipeline(single, { device: "cpu", configs: tiny() });
    p2.dispose();
  });

  test("single-file errors: no tokenizer, unknown family without configs, folder-only options", async () => {
    // op outputs take memory when the queue runs them: wait for it before each count. "<=": a GC
    // finalizer may free an earlier suite's garbage meanwhile (a leak still shows as more)
    const inUse = async () => { await synchronize("cpu"); return memoryStats("cpu").bytesInUse; };
    const before = await inUse();
    await expect(loadPipeline(single, { device: "cpu" })).rejects.toThrow(/single-file checkpoint, which has no tokenizer files: pass \{ tokenizer:/);
    await expect(loadPipeline(single, { device: "cpu", tokenizer: path.join(tiny(), "tokenizer") }))
      .rejects.toThrow(/not recognised as SD 1\.x or 2\.x \(text encoder: transformers, cross-attention width: 32\); pass \{ configs:/);
    // wrong configs: the conversion names the mismatching tensors, and nothing stays allocated
    await expect(loadPipeline(single, { device: "cpu", configs: builtinConfigDir("sd1"), tokenizer: path.join(tiny(), "tokenizer") }))
      .rejects.toThrow(/does not fit the configs/);
    expect(await inUse()).toBeLessThanOrEqual(before);
    await expect(loadPipeline(single, { device: "cpu", variant: "fp16" })).rejects.toThrow(/variant is for diffusers folders/);
    await expect(loadPipeline(tiny(), { device: "cpu", tokenizer: "x" })).rejects.toThrow(/for single-file checkpoints/);
    await expect(loadPipeline(path.join(tmp, "missing"), { device: "cpu" })).rejects.toThrow(/does not exist/);
    await expect(loadPipeline(tiny(), { device: "cpu", variant: "fp16" })).rejects.toThrow(/no "fp16" variant weights/);
    const refiner = path.join(tmp, "refiner");
    fs.mkdirSync(refiner);
    const index = readJson(referencePath("models", "tiny-sdxl", "model_index.json"));
    fs.writeFileSync(path.join(refiner, "model_index.json"), JSON.stringify({ ...index, text_encoder: [null, null], tokenizer: [null, null] }));
    // a refiner's layout (sdxl-refiner.test.ts loads a whole one); here its folders are missing
    await expect(loadPipeline(refiner, { device: "cpu" })).rejects.toThrow(/component "tokenizer_2" is listed in model_index.json but the folder .* is missing/);
    fs.writeFileSync(path.join(refiner, "model_index.json"), JSON.stringify({ ...index, _class_name: "KandinskyV22Pipeline" }));
    await expect(loadPipeline(refiner, { device: "cpu" })).rejects.toThrow(/is a KandinskyV22Pipeline; loadPipeline loads Stable Diffusion 1.x\/2.x and SDXL pipelines/);
    (await loadPipeline(referencePath("models", "tiny-sd-inpaint"), { device: "cpu" })).dispose();  // inpainting models load (inpaint())
    expect(await inUse()).toBeLessThanOrEqual(before);
  });

  test("createRandomPipeline: seeded weights (same seed, same weights), norms at 1 and 0, runs end to end", async () => {
    // the tiny-sd configs without a tokenizer folder: the byte-level tokenizer steps in
    const cfg = path.join(tmp, "cfg");
    for (const sub of ["unet", "vae", "text_encoder"]) {
      fs.mkdirSync(path.join(cfg, sub), { recursive: true });
      fs.copyFileSync(path.join(tiny(), sub, "config.json"), path.join(cfg, sub, "config.json"));
    }
    fs.mkdirSync(path.join(cfg, "scheduler"));
    fs.copyFileSync(path.join(tiny(), "scheduler", "scheduler_config.json"), path.join(cfg, "scheduler", "scheduler_config.json"));
    const a = await createRandomPipeline(cfg, { seed: 1, device: "cpu" });
    const b = await createRandomPipeline(cfg, { seed: 1, device: "cpu" });
    const c = await createRandomPipeline(cfg, { seed: 2, device: "cpu", tokenizerDir: path.join(tiny(), "tokenizer") });
    try {
      const pa = new Map(a.unet.namedParameters()), pb = new Map(b.unet.namedParameters()), pc = new Map(c.unet.namedParameters());
      const w = "down_blocks.0.resnets.0.conv1.weight";
      const [va, vb, vc] = await Promise.all([pa, pb, pc].map((m) => m.get(w)!.toFloat32Array()));
      expect(va).toEqual(vb);
      expect(va.some((v, i) => v !== vc[i])).toBe(true);
      const std = Math.sqrt(va.reduce((s, v) => s + v * v, 0) / va.length);
      expect(std).toBeGreaterThan(0.018);
      expect(std).toBeLessThan(0.022);
      const norm = await pa.get("down_blocks.0.resnets.0.norm1.weight")!.toFloat32Array();
      const normB = await pa.get("down_blocks.0.resnets.0.norm1.bias")!.toFloat32Array();
      expect([Math.min(...norm), Math.max(...norm), Math.min(...normB), Math.max(...normB)]).toEqual([1, 1, 0, 0]);
      expect(a.tokenizer.vocabSize).toBe(514);
      expect(c.tokenizer.vocabSize).toBe(49408);
      const r = await a.generate({ prompt: "noise", width: 32, height: 32, steps: 2, seed: 1 });
      expect(r.images[0].parametersText).toContain("Model: random-cfg");
      expect(r.images[0].data.length).toBe(32 * 32 * 3);
    } finally {
      a.dispose();
      b.dispose();
      c.dispose();
    }
  });
});
