// Training from an SDXL model (tiny-sdxl): both text encoders stay frozen and condition the U-Net
// as diffusers' encode_prompt does (hidden states side by side, pooled text + size ids); LoRA and
// full fine-tuning start from the same loss and learn; the exported folder is an SDXL pipeline
// and the LoRA loads into one; textual inversion trains the word in both encoders; what SDXL
// cannot do here is refused up front.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline } from "../../lib/pipelines/load";
import { train } from "../../lib/train/trainer";
import { InMemoryDataset } from "../../lib/train/data";
import { createShapesDataset } from "../../lib/train/shapes";
import { describeIfReference, referencePath } from "../helpers/reference";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { openWeightsFile } from "../../lib/io/model-folder";
import { CLIPTokenizer } from "../../lib/tokenizers/clip";
import { liveNodeCount } from "../../lib/autograd";

const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-sdxl-train-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describeIfReference("train({ init: tiny-sdxl })", () => {
  const init = () => referencePath("models", "tiny-sdxl");
  const shapes = createShapesDataset({ count: 8, resolution: 64, seed: 0 });
  const run = (out: string, extra: Record<string, unknown> = {}) =>
    train({ ...quiet, data: shapes, out: path.join(tmp, out), init: init(), resolution: 64, steps: 3, batchSize: 2, seed: 5, lr: 1e-3, ...extra });
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

  test("LoRA and full fine-tuning start from the base model's loss; the captions condition it", async () => {
    const lora = await run("lora", { lora: { rank: 2 } });
    const full = await run("full");
    expect(lora.losses[0]).toBe(full.losses[0]);
    const recaptioned = new InMemoryDataset(Array.from({ length: 8 }, (_, i) => ({ image: shapes.image(i), caption: "something else entirely" })), 64);
    const other = await train({ ...quiet, data: recaptioned, out: path.join(tmp, "other"), init: init(), resolution: 64, steps: 1, batchSize: 2, seed: 5, lr: 1e-3 });
    expect(other.losses[0]).not.toBe(full.losses[0]);
    // the exported folder is an SDXL pipeline with both encoders and tokenizers, which loads and draws
    const out = path.join(tmp, "full");
    const index = JSON.parse(fs.readFileSync(path.join(out, "model_index.json"), "utf8"));
    expect(index).toMatchObject({ _class_name: "StableDiffusionXLPipeline", force_zeros_for_empty_prompt: true, text_encoder_2: ["transformers", "CLIPTextModelWithProjection"] });
    for (const d of ["text_encoder_2", "tokenizer_2", "unet", "vae"]) expect(fs.existsSync(path.join(out, d))).toBe(true);
    const pipe = await loadPipeline(out, { device: "cpu" });
    try {
      expect(pipe.isXL).toBe(true);
      const before = await pipe.generate({ prompt: "a red circle", steps: 2, seed: 1, width: 64, height: 64 });
      // the LoRA (adapters on the U-Net's attention only) loads into the SDXL pipeline and changes its images
      const applied = pipe.loadLora(lora.loraFile!);
      expect(applied.layers).toMatchObject({ unet: 96, textEncoder: 0, textEncoder2: 0 });
      const after = await pipe.generate({ prompt: "a red circle", steps: 2, seed: 1, width: 64, height: 64 });
      expect(Buffer.from(after.images[0].data).equals(Buffer.from(before.images[0].data))).toBe(false);
    } finally {
      pipe.dispose();
    }
  });

  test("it learns: one image, 30 fine-tuning steps lower the loss", async () => {
    const one = new InMemoryDataset(Array.from({ length: 4 }, () => ({ image: shapes.image(0), caption: shapes.caption(0) })), 64);
    const r = await train({ ...quiet, data: one, out: path.join(tmp, "learn"), init: init(), resolution: 64, steps: 30, batchSize: 4, seed: 2, lr: 1e-3, randomFlip: false });
    expect(mean(r.losses.slice(-10))).toBeLessThan(0.8 * mean(r.losses.slice(0, 10)));
  });

  test("textual inversion trains the word in both encoders: clip_l and clip_g from the initializer's rows, the word in the metadata", async () => {
    const ti = { token: "<w>", initializer: "red circle", vectors: 2 };
    const nodes0 = liveNodeCount();
    const still = await run("ti-still", { lr: 1e-12, textualInversion: ti });
    expect(liveNodeCount()).toBe(nodes0);  // nothing left on the tape: no recorded branch the loss does not use
    const moved = await run("ti-moved", { lr: 1e-2, textualInversion: ti });
    expect(still.parameters.textualInversion).toBe(2 * (16 + 24));
    const read = (f: string) => {
      const sf = SafetensorsFile.open(f);
      try {
        return { keys: sf.keys().sort(), token: sf.metadata.token, l: sf.readFloat32("clip_l"), g: sf.readFloat32("clip_g") };
      } finally {
        sf.close();
      }
    };
    const a = read(still.embeddingFile!), b = read(moved.embeddingFile!);
    expect([a.keys, a.token]).toEqual([["clip_g", "clip_l"], "<w>"]);
    // independently: each encoder's mean row of the initializer's tokens
    const folder = referencePath("models", "tiny-sdxl");
    for (const [sub, tokDir, got] of [["text_encoder", "tokenizer", a.l], ["text_encoder_2", "tokenizer_2", a.g]] as const) {
      const ids = CLIPTokenizer.fromDirectory(path.join(folder, tokDir)).encode("red circle").slice(1, -1);
      const w = openWeightsFile(path.join(folder, sub, "model.safetensors"));
      const table = w.readFloat32("text_model.embeddings.token_embedding.weight"), D = w.shape("text_model.embeddings.token_embedding.weight")[1];
      w.close();
      let worst = 0;
      for (let v = 0; v < 2; v++) for (let j = 0; j < D; j++) worst = Math.max(worst, Math.abs(got[v * D + j] - ids.reduce((s, id) => s + table[id * D + j], 0) / ids.length));
      expect(worst).toBeLessThan(1e-5);
    }
    // trained, both encoders' rows move
    const change = (x: Float32Array, y: Float32Array) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));
    expect(change(a.l, b.l)).toBeGreaterThan(1e-3);
    expect(change(a.g, b.g)).toBeGreaterThan(1e-3);
    const pipe = await loadPipeline(folder, { device: "cpu" });
    try {
      expect(pipe.loadTextualInversion(moved.embeddingFile!)).toMatchObject({ token: "<w>", vectors: 2 });
      expect(pipe.tokenizer2!.encode("a <w>")).toEqual(pipe.tokenizer2!.encode("a <W>"));
    } finally {
      pipe.dispose();
    }
  });

  test("refused for SDXL: training its text encoders, text-encoder LoRA", async () => {
    await expect(run("x1", { textEncoder: "train" })).rejects.toThrow(/SDXL model's text encoders stay frozen/);
    await expect(run("x2", { lora: { textEncoder: true } })).rejects.toThrow(/lora.textEncoder is not supported for SDXL/);
  });
});
