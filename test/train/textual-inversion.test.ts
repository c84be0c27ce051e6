// Textual-inversion training on the built-in model: only the new word's rows train (they start at
// the initializer's mean embedding), the word learns a concept the frozen model can draw (images
// the model made of "a red apple" become the word's), prompts come from templates or captions,
// a stopped run resumes bit for bit, the CLI flags, and the combinations that make no sense.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline } from "../../lib/pipelines/load";
import { openWeightsFile } from "../../lib/io/model-folder";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { CLIPTokenizer } from "../../lib/tokenizers/clip";
import { train } from "../../lib/train/trainer";
import { InMemoryDataset } from "../../lib/train/data";
import { createShapesDataset } from "../../lib/train/shapes";
import { imageFeature, featureDistance } from "../../lib/eval/features";
import { parseTrainArgs, runTrain } from "../../lib/cli/train";
import { assertBuilt, runCli } from "../cli/run";

const BUILTIN = path.resolve(__dirname, "../../models/builtin");
const quiet = { handleSigint: false, onWarn: () => undefined };
let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ti-train-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function readEmbedding(file: string): { key: string; shape: number[]; data: Float32Array } {
  const f = SafetensorsFile.open(file);
  try {
    const [key] = f.keys();
    expect(f.keys()).toHaveLength(1);
    return { key, shape: [...f.info(key).shape], data: f.readFloat32(key) };
  } finally {
    f.close();
  }
}

describe("train({ init, textualInversion }) on the built-in model", () => {
  const shapes = () => createShapesDataset({ count: 8, resolution: 64, seed: 0 });
  const run = (out: string, extra: Record<string, unknown> = {}) =>
    train({ ...quiet, data: shapes(), out, init: BUILTIN, resolution: 64, steps: 4, batchSize: 2, seed: 3, textualInversion: { token: "<shp>", initializer: "red circle", vectors: 2 }, ...extra });

  test("the rows start at the initializer's mean embedding and are all that trains; template prompts name the word", async () => {
    const out = path.join(tmp, "init");
    const prompts: string[] = [];
    const r = await run(out, { lr: 1e-12, onBatch: (b: { captions: string[] }) => prompts.push(...b.captions) });
    expect(r.embeddingFile).toBe(path.join(out, "learned_embeds.safetensors"));
    expect(fs.existsSync(path.join(out, "unet"))).toBe(false);
    expect(JSON.parse(fs.readFileSync(path.join(out, "checkpoint", "state.json"), "utf8")).paramNames).toEqual(["textual_inversion.<shp>"]);
    // independently: the mean of the rows of "red" and "circle" in the model's embedding table
    const tok = CLIPTokenizer.fromDirectory(path.join(BUILTIN, "tokenizer"));
    const ids = tok.encode("red circle").slice(1, -1);
    const te = openWeightsFile(path.join(BUILTIN, "text_encoder", "model.safetensors"));
    const table = te.readFloat32("text_model.embeddings.token_embedding.weight");
    const D = te.shape("text_model.embeddings.token_embedding.weight")[1];
    te.close();
    const mean = Array.from({ length: D }, (_, j) => ids.reduce((a, id) => a + table[id * D + j], 0) / ids.length);
    const e = readEmbedding(r.embeddingFile!);
    expect(e.key).toBe("<shp>");
    expect(e.shape).toEqual([2, D]);
    expect(r.parameters.textualInversion).toBe(2 * D);
    let worst = 0;
    for (let v = 0; v < 2; v++) for (let j = 0; j < D; j++) worst = Math.max(worst, Math.abs(e.data[v * D + j] - mean[j]));
    expect(worst).toBeLessThan(1e-5);
    // "object" templates around the word, no empty prompts (condDropout defaults to 0 here)
    expect(prompts).toHaveLength(8);
    expect(prompts.every((p) => /^an? .*<shp>$/.test(p))).toBe(true);
    expect(new Set(prompts).size).toBeGreaterThan(1);
  });

  test("the word learns a concept: trained on the model's own 'a red apple' images, it draws them", async () => {
    const pipe = await loadPipeline(BUILTIN, { device: "cpu" });
    try {
      const draw = async (prompt: string, seed: number) => (await pipe.generate({ prompt, steps: 16, cfg: 5, seed, sampler: "ddim" })).images[0];
      const targets = [];
      for (let s = 0; s < 8; s++) targets.push(await draw("a red apple", s));
      const gallery = targets.map((im) => imageFeature(im));
      const distance = async (prompt: string) => {
        let sum = 0;
        for (let s = 100; s < 104; s++) {
          const f = imageFeature(await draw(prompt, s));
          sum += Math.min(...gallery.map((g) => featureDistance(f, g)));
        }
        return sum / 4;
      };
      const ds = new InMemoryDataset(targets.map((im) => ({ image: { width: im.width, height: im.height, data: im.data }, caption: "a <thing>" })), 64);
      const before = await distance("flag");
      const r = await train({ ...quiet, data: ds, out: path.join(tmp, "apple"), init: BUILTIN, steps: 200, batchSize: 8, seed: 1, lr: 0.1,
        textualInversion: { token: "<thing>", initializer: "flag", vectors: 2, template: "captions" } });
      expect(r.losses.every(Number.isFinite)).toBe(true);
      expect(pipe.loadTextualInversion(r.embeddingFile!)).toMatchObject({ token: "<thing>", vectors: 2 });
      const after = await distance("a <thing>");
      process.stderr.write(`textual inversion: distance to the target images ${before.toFixed(1)} (initializer "flag") -> ${after.toFixed(1)} ("a <thing>")\n`);
      expect(after).toBeLessThan(0.85 * before);
    } finally {
      pipe.dispose();
    }
  }, 120_000);

  test("a stopped run resumed gives the same embedding file, bit for bit", async () => {
    const straight = path.join(tmp, "straight"), halves = path.join(tmp, "halves");
    await run(straight, { lr: 1e-2 });
    const controller = new AbortController();
    const first = await run(halves, { lr: 1e-2, onLog: (i: { step: number }) => { if (i.step === 2) controller.abort(); }, signal: controller.signal });
    expect([first.step, first.interrupted]).toEqual([2, true]);
    const r = await run(halves, { lr: 1e-2, resume: true });
    expect(r.step).toBe(4);
    expect(fs.readFileSync(path.join(halves, "learned_embeds.safetensors")).equals(fs.readFileSync(path.join(straight, "learned_embeds.safetensors")))).toBe(true);
    await expect(run(halves, { lr: 1e-2, resume: true, textualInversion: { token: "<other>" } })).rejects.toThrow(/differ from the checkpoint/);
  });

  test("the CLI: --textual-inversion with --ti-initializer, --ti-vectors, --ti-template, and the line that names the file", async () => {
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--init", "m", "--textual-inversion", "<w>", "--ti-vectors", "3", "--ti-template", "style", "--ti-initializer", "oil painting"]))
      .toEqual({ data: "d", out: "o", init: "m", textualInversion: { token: "<w>", vectors: 3, template: "style", initializer: "oil painting" } });
    expect(() => parseTrainArgs(["--data", "d", "--out", "o", "--ti-vectors", "3"])).toThrow(/--ti-vectors goes with --textual-inversion/);
    expect(parseTrainArgs(["--data", "d", "--out", "o", "--lora-rank", "2"])).toEqual({ data: "d", out: "o", lora: { rank: 2 } });
    const lines: string[] = [];
    const out = path.join(tmp, "cli");
    expect(await runTrain({ ...quiet, data: shapes(), out, init: BUILTIN, resolution: 64, steps: 1, batchSize: 2, textualInversion: { token: "<w>" } }, { write: (x: string) => lines.push(x) })).toBe(0);
    expect(lines.join("")).toMatch(/wrote .*learned_embeds\.safetensors in .*trained values for <w>.*--embedding .* and "<w>" in the prompt/);
  });

  test("the command line itself routes --textual-inversion and --lora-rank to train (a spawned diffusekit train)", () => {
    assertBuilt();
    const ti = runCli(["train", "--init", BUILTIN, "--data", "shapes:4", "--out", path.join(tmp, "cli-ti"), "--steps", "1", "--batch-size", "2",
      "--textual-inversion", "<w>", "--ti-vectors", "2", "--ti-initializer", "red"]);
    expect(ti.code).toBe(0);
    expect(ti.stderr).toMatch(/128 trained values for <w>/);
    const lora = runCli(["train", "--init", BUILTIN, "--data", "shapes:4", "--out", path.join(tmp, "cli-lora"), "--steps", "1", "--batch-size", "2", "--lora-rank", "2"]);
    expect(lora.code).toBe(0);
    expect(lora.stderr).toMatch(/wrote .*lora\.safetensors/);
    const bad = runCli(["train", "--data", "shapes:4", "--out", path.join(tmp, "cli-bad"), "--ti-template", "style"]);
    expect([bad.code, bad.stderr.trim()]).toEqual([2, "diffusekit train: train: --ti-template goes with --textual-inversion <word>"]);
  });

  test("refused: no init, with lora or textEncoder, a word the vocabulary has, captions without the word, bad settings", async () => {
    await expect(train({ ...quiet, data: shapes(), out: path.join(tmp, "x1"), resolution: 64, steps: 1, textualInversion: { token: "<w>" } })).rejects.toThrow(/pass init/);
    await expect(run(path.join(tmp, "x2"), { lora: true })).rejects.toThrow(/textualInversion and lora/);
    await expect(run(path.join(tmp, "x3"), { textEncoder: "train" })).rejects.toThrow(/frozen \(leave textEncoder unset\)/);
    await expect(run(path.join(tmp, "x4"), { textualInversion: { token: "apple" } })).rejects.toThrow(/"apple" is already a token/);
    await expect(run(path.join(tmp, "x5"), { textualInversion: { token: "<w>", template: "captions" } })).rejects.toThrow(/8 of 8 images have no caption containing "<w>"/);
    await expect(run(path.join(tmp, "x6"), { textualInversion: { token: "<w>", vectors: 0 } })).rejects.toThrow(/vectors must be an integer in \[1, 64\]/);
    await expect(run(path.join(tmp, "x7"), { textualInversion: { token: "two words" } })).rejects.toThrow(/one word without spaces/);
    await expect(run(path.join(tmp, "x8"), { textualInversion: { token: "<w>", initializer: "   " } })).rejects.toThrow(/initializer must be a non-empty string/);
    await expect(run(path.join(tmp, "x9"), { textualInversion: { token: "<w>", template: "poem" } })).rejects.toThrow(/template must be one of/);
    await expect(run(path.join(tmp, "x10"), { textualInversion: { token: "<w>", rate: 1 } })).rejects.toThrow(/no option "rate"/);
  });
});
