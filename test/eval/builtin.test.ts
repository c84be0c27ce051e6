// The built-in model (models/builtin): it is there and small, loads, and generates a 64x64 image
// deterministically from a fixed seed; and the evaluation's feature / retrieval / PSNR functions
// on known inputs.
import * as fs from "fs";
import * as path from "path";
import { BUILTIN_MODEL_DIR, builtinModelPath } from "../../lib/generate";
import { loadPipeline } from "../../lib/pipelines/load";
import type { StableDiffusionPipeline } from "../../lib/pipelines/stable-diffusion";
import { FEATURE_SIDE, featureDistance, imageFeature, nearest, psnr } from "../../lib/eval/features";
import { evalIndices, formatReport, promptFor, type EvalReport } from "../../lib/eval/main";
import { contactSheet } from "../../lib/eval/sheet";

function folderBytes(dir: string): number {
  let n = 0;
  for (const f of fs.readdirSync(dir)) {
    const p = path.join(dir, f);
    const s = fs.statSync(p);
    n += s.isDirectory() ? folderBytes(p) : s.size;
  }
  return n;
}

describe("the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => {
    pipe = await loadPipeline(BUILTIN_MODEL_DIR, { device: "cpu" });
  });
  afterAll(() => pipe?.dispose());

  test("ships in diffusers layout with its tokenizer and licence notice, under 16 MB", () => {
    expect(builtinModelPath()).toBe(BUILTIN_MODEL_DIR);
    for (const f of ["model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "unet/config.json", "vae/config.json", "text_encoder/config.json", "NOTICE-emoji.txt"])
      expect(fs.existsSync(path.join(BUILTIN_MODEL_DIR, f))).toBe(true);
    expect(folderBytes(BUILTIN_MODEL_DIR)).toBeLessThan(16 * 1024 * 1024);
    // the weights are stored as float16
    const unet = fs.readFileSync(path.join(BUILTIN_MODEL_DIR, "unet", "diffusion_pytorch_model.safetensors"));
    const header = JSON.parse(unet.subarray(8, 8 + Number(unet.readBigUInt64LE(0))).toString("utf8")) as Record<string, { dtype?: string }>;
    const dtypes = new Set(Object.entries(header).filter(([k]) => k !== "__metadata__").map(([, v]) => v.dtype));
    expect([...dtypes]).toEqual(["F16"]);
  });

  test("generates a 64x64 image from a prompt, the same for the same seed", async () => {
    const opts = { prompt: "red apple, apple, food & drink", steps: 8, cfg: 5, sampler: "ddim", seed: 7 };
    const a = await pipe.generate(opts);
    const b = await pipe.generate(opts);
    expect(a.images[0].width).toBe(64);
    expect(a.images[0].height).toBe(64);
    expect(Buffer.from(a.images[0].data).equals(Buffer.from(b.images[0].data))).toBe(true);
    // not a blank image
    const d = a.images[0].data;
    let min = 255, max = 0;
    for (const v of d) { min = Math.min(min, v); max = Math.max(max, v); }
    expect(max - min).toBeGreaterThan(50);
    const c = await pipe.generate({ ...opts, seed: 8 });
    expect(Buffer.from(c.images[0].data).equals(Buffer.from(d))).toBe(false);
  });
});

describe("eval features", () => {
  // a 64x64 RGBA image: a red disc, half-transparent rim, transparent outside
  const W = 64;
  const rgba = { width: W, height: W, data: new Uint8Array(W * W * 4) };
  const rgb = { width: W, height: W, data: new Uint8Array(W * W * 3) };
  for (let y = 0; y < W; y++)
    for (let x = 0; x < W; x++) {
      const r = Math.hypot(x - 31.5, y - 31.5), a = r < 20 ? 255 : r < 24 ? 128 : 0, p = y * W + x;
      rgba.data.set([255, 0, 0, a], 4 * p);
      const over = (c: number) => Math.round((c * a + 255 * (255 - a)) / 255);
      rgb.data.set([over(255), over(0), over(0)], 3 * p);
    }

  test("an RGBA image and the same image composited on white have (nearly) the same feature", () => {
    const fa = imageFeature(rgba), fb = imageFeature(rgb);
    expect(fa.length).toBe(FEATURE_SIDE * FEATURE_SIDE * 3);
    expect(featureDistance(fa, fb)).toBeLessThan(1e-3);
    // the corners are white, the centre red
    expect(Array.from(fa.subarray(0, 3))).toEqual([1, 1, 1]);
    const c = (16 * FEATURE_SIDE + 16) * 3;
    expect(fa[c]).toBeCloseTo(1, 5);
    expect(fa[c + 1]).toBeCloseTo(0, 5);
  });

  test("distance, nearest neighbours and histogram on a known pair", () => {
    const white = { width: W, height: W, data: new Uint8Array(W * W * 3).fill(255) };
    const black = { width: W, height: W, data: new Uint8Array(W * W * 3) };
    // white vs black: every one of the 3072 values differs by 1
    expect(featureDistance(imageFeature(white), imageFeature(black))).toBeCloseTo(FEATURE_SIDE * FEATURE_SIDE * 3, 6);
    const gallery = [white, rgb, black].map((i) => imageFeature(i));
    expect(nearest(imageFeature(rgba), gallery, 3)).toEqual([1, 0, 2]);
    const h = imageFeature(white, { histogramWeight: 2 });
    expect(h.length).toBe(FEATURE_SIDE * FEATURE_SIDE * 3 + 64);
    expect(h[h.length - 1]).toBeCloseTo(2, 6);  // all pixels in the brightest bin
  });

  test("psnr, evalIndices and the contact sheet", () => {
    const a = new Uint8Array([0, 0, 0, 0]), b = new Uint8Array([255, 0, 0, 0]);
    expect(psnr(a, b)).toBeCloseTo(10 * Math.log10(4), 6);
    expect(psnr(a, a)).toBe(Infinity);
    expect(evalIndices(10, 4)).toEqual([0, 2, 5, 7]);
    const apple = { caption: "red apple, apple, food & drink", name: "red apple" };
    expect(["{caption}", "{a name}", "a picture of {a name}", "{name} emoji"].map((t) => promptFor(t, apple)))
      .toEqual(["red apple, apple, food & drink", "a red apple", "a picture of a red apple", "red apple emoji"]);
    expect(promptFor("{a name}", { caption: "", name: "octopus" })).toBe("an octopus");
    const row = { sampler: "ddim", steps: 25, cfg: 5, n: 256, top1: 0.82, top5: 0.898, secondsPerImage: 0.16 };
    const report: EvalReport = {
      model: "m", gallery: 1816, captions: 256, feature: "f", retrieval: [{ prompts: "{caption}", ...row }, { prompts: "{a name}", ...row, top5: 0.902 }],
      vae: { heldOut: { n: 95, psnr: 29.06, psnrOfMeanMse: 26.6 }, train: { n: 95, psnr: 29.7, psnrOfMeanMse: 27 } },
    };
    const text = formatReport(report).split("\n");
    expect(text[2]).toMatch(/^prompts\s+sampler\s+steps\s+cfg\s+top-1\s+top-5/);
    expect(text[3]).toMatch(/^\{caption\}\s+ddim\s+25\s+5\s+82\.0%\s+89\.8%/);
    expect(text[4]).toMatch(/^\{a name\}\s+ddim\s+25\s+5\s+82\.0%\s+90\.2%/);
    expect(evalIndices(3, 5)).toEqual([0, 1, 2]);
    const sheet = contactSheet([{ label: "red apple", images: [rgb, rgb] }], { columns: 1, tile: 64 });
    expect(sheet.data.length).toBe(sheet.width * sheet.height * 3);
    expect(sheet.width).toBeGreaterThanOrEqual(2 * 64);
  });
});
