// Textual inversion: A1111 (emb_params, file name as the word), diffusers (one tensor named by its
// word) and SDXL (clip_l + clip_g) embeddings become new token ids whose embedding rows are the
// file's vectors; the word is matched in any case, multi-vector words expand, prompts use them;
// bad files change nothing.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { writeSafetensors } from "../../lib/io/safetensors";
import { describeIfReference, referencePath } from "../helpers/reference";
import { randn, toF32 } from "../helpers/naive";
import { generate, releasePipelines } from "../../lib/generate";
import { runCli } from "../cli/run";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

async function rowsOf(pipe: StableDiffusionPipeline, first: number, n: number, which: 1 | 2 = 1): Promise<Float32Array> {
  const te = which === 1 ? pipe.textEncoder : pipe.textEncoder2!;
  const w = await te.textModel.embeddings.tokenEmbedding.weight.toFloat32Array();
  const D = te.config.hiddenSize;
  return w.slice(first * D, (first + n) * D);
}

describe("textual inversion on the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  let tmp: string;
  let D: number;
  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ti-"));
    pipe = await loadPipeline(builtin, { device: "cpu" });
    D = pipe.textEncoder.config.hiddenSize;
  });
  afterAll(() => {
    pipe.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test("A1111 emb_params: the file name is the word, two vectors become two new ids with those rows", async () => {
    const file = path.join(tmp, "MyStyle.safetensors");
    const vecs = toF32(randn([2, D], 3, 0.5));
    writeSafetensors(file, { emb_params: { dtype: "F32", shape: [2, D], data: vecs } });
    const first = pipe.tokenizer.vocabSize;
    expect(pipe.loadTextualInversion(file)).toMatchObject({ token: "MyStyle", vectors: 2 });
    expect(pipe.tokenizer.vocabSize).toBe(first + 2);
    const plain = pipe.tokenizer.encode("a red apple");
    expect(pipe.tokenizer.encode("a red mystyle apple")).toEqual([...plain.slice(0, 3), first, first + 1, ...plain.slice(3)]);
    expect(pipe.tokenizer.encode("a red MYSTYLE apple")).toEqual(pipe.tokenizer.encode("a red mystyle apple"));
    expect(Array.from(await rowsOf(pipe, first, 2))).toEqual(Array.from(vecs));
    const opts = { steps: 2, seed: 4 };
    const a = await pipe.generate({ ...opts, prompt: "a red apple, mystyle" }), b = await pipe.generate({ ...opts, prompt: "a red apple" });
    expect(a.images[0].data).not.toEqual(b.images[0].data);
    // and with prompt weighting (the chunker tokenizes the same way)
    await pipe.generate({ ...opts, prompt: "a red apple, (mystyle:1.2)", promptWeighting: true });
  });

  test("diffusers learned_embeds: the tensor's name is the word (brackets included), one vector", async () => {
    const file = path.join(tmp, "learned_embeds.safetensors");
    const v = toF32(randn([D], 5, 0.5));
    writeSafetensors(file, { "<cat-toy>": { dtype: "F32", shape: [D], data: v } });
    const first = pipe.tokenizer.vocabSize;
    expect(pipe.loadTextualInversion(file)).toMatchObject({ token: "<cat-toy>", vectors: 1 });
    expect(pipe.tokenizer.encode("a <cat-toy>").slice(2, 3)).toEqual([first]);
    expect(Array.from(await rowsOf(pipe, first, 1))).toEqual(Array.from(v));
    const renamed = path.join(tmp, "other.safetensors");
    writeSafetensors(renamed, { "<cat-toy>": { dtype: "F32", shape: [1, D], data: v } });
    expect(pipe.loadTextualInversion(renamed, { token: "toy2" }).token).toBe("toy2");
  });

  test("bad files and words are named and change nothing", async () => {
    const size = pipe.tokenizer.vocabSize, rows = pipe.textEncoder.textModel.embeddings.tokenEmbedding.count;
    const f = (name: string, rec: Parameters<typeof writeSafetensors>[1]) => {
      const p = path.join(tmp, name);
      writeSafetensors(p, rec);
      return p;
    };
    const t = (shape: number[]) => ({ dtype: "F32" as const, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
    expect(() => pipe.loadTextualInversion(f("apple.safetensors", { emb_params: t([1, D]) }))).toThrow(/"apple" is already a token of this model/);
    expect(() => pipe.loadTextualInversion(f("wide.safetensors", { emb_params: t([1, D + 1]) }))).toThrow(/takes vectors of width/);
    expect(() => pipe.loadTextualInversion(f("xl.safetensors", { clip_l: t([1, 768]), clip_g: t([1, 1280]) }))).toThrow(/is an SDXL embedding/);
    expect(() => pipe.loadTextualInversion(f("two.safetensors", { a: t([1, D]), b: t([1, D]) }))).toThrow(/is not a textual-inversion embedding/);
    expect(() => pipe.loadTextualInversion(f("w.safetensors", { emb_params: t([1, D]) }), { token: "two words" })).toThrow(/one word without spaces/);
    const pt = path.join(tmp, "old.pt");
    fs.writeFileSync(pt, Buffer.from([0x80, 0x02, 0x7d, 0x71]));
    expect(() => pipe.loadTextualInversion(pt)).toThrow(/pickle/i);
    expect([pipe.tokenizer.vocabSize, pipe.textEncoder.textModel.embeddings.tokenEmbedding.count]).toEqual([size, rows]);
  });
});

test("the one-call API and the CLI take embeddings", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ti-cli-"));
  try {
    const p = await loadPipeline(builtin, { device: "cpu" });
    const D = p.textEncoder.config.hiddenSize;
    p.dispose();
    const file = path.join(tmp, "shiny.safetensors");
    writeSafetensors(file, { emb_params: { dtype: "F32", shape: [1, D], data: toF32(randn([1, D], 9, 0.5)) } });
    const opts = { prompt: "a red apple, shiny", steps: 2, seed: 3, device: "cpu" };
    const withIt = await generate({ ...opts, embeddings: [file] }), without = await generate(opts);
    expect(withIt.images[0].data).not.toEqual(without.images[0].data);
    const r = runCli(["generate", "a red apple, shiny", "--steps", "2", "--seed", "3", "--device", "cpu", "--embedding", file, "-q", "-o", path.join(tmp, "o.png")]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(runCli(["generate", "x", "--embedding", path.join(tmp, "none.safetensors")]).stderr).toMatch(/--embedding .*none\.safetensors: no such file/);
  } finally {
    await releasePipelines();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

describeIfReference("textual inversion on SDXL (tiny-sdxl)", () => {
  test("clip_l and clip_g go to the two encoders under one word", async () => {
    const pipe = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ti-xl-"));
    try {
      const l = toF32(randn([3, 16], 1, 0.5)), g = toF32(randn([3, 24], 2, 0.5));
      const file = path.join(tmp, "xlstyle.safetensors");
      writeSafetensors(file, { clip_l: { dtype: "F32", shape: [3, 16], data: l }, clip_g: { dtype: "F32", shape: [3, 24], data: g } });
      const [f1, f2] = [pipe.tokenizer.vocabSize, pipe.tokenizer2!.vocabSize];
      expect(pipe.loadTextualInversion(file)).toMatchObject({ token: "xlstyle", vectors: 3 });
      expect(Array.from(await rowsOf(pipe, f1, 3, 1))).toEqual(Array.from(l));
      expect(Array.from(await rowsOf(pipe, f2, 3, 2))).toEqual(Array.from(g));
      expect(pipe.tokenizer2!.encode("xlstyle cat").slice(1, 4)).toEqual([f2, f2 + 1, f2 + 2]);
      const r = await pipe.generate({ prompt: "a cat, xlstyle", steps: 2, seed: 1 });
      expect(r.images).toHaveLength(1);
    } finally {
      pipe.dispose();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
