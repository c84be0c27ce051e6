// A1111-style prompt weighting: the parser (emphasis, de-emphasis, explicit weights, nesting,
// escapes, BREAK, stray and unclosed brackets), 75-token chunks with comma backtracking, and the
// encoding: unweighted short prompts are encoded exactly as without weighting, weights keep each
// chunk's mean, long prompts give 77·k tokens on every CFG row (SD and SDXL).
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { parsePromptWeights, weightedChunks } from "../../lib/pipelines/prompt-weighting";
import { encodeWeightedTexts } from "../../lib/pipelines/weighted-encoding";
import { GENERATE_KEYS, disposeConditioning, encodeConditioning, resolveCommon } from "../../lib/pipelines/text-to-image";
import { describeIfReference, referencePath } from "../helpers/reference";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const frag = (p: string) => parsePromptWeights(p).map((f) => (f.brk ? "BREAK" : [f.text, Number(f.weight.toFixed(6))]));

test("the parser: (x) x1.1, [x] /1.1, (x:w), nesting multiplies, escapes are literal, BREAK splits", () => {
  expect(frag("a (cat) [dog] (bird:1.5) \\(x\\)")).toEqual([["a ", 1], ["cat", 1.1], [" ", 1], ["dog", 0.909091], [" ", 1], ["bird", 1.5], [" (x)", 1]]);
  expect(frag("((red)) apple")).toEqual([["red", 1.21], [" apple", 1]]);
  expect(frag("[(gold:2)] coin")).toEqual([["gold", 1.818182], [" coin", 1]]);
  expect(frag("(a (b:0.5) c)")).toEqual([["a ", 1.1], ["b", 0.55], [" c", 1.1]]);
  expect(frag("a BREAK b")).toEqual([["a", 1], "BREAK", ["b", 1]]);
  expect(frag("unclosed (bracket")).toEqual([["unclosed ", 1], ["bracket", 1.1]]);
  expect(frag("stray) ] and x:y")).toEqual([["stray) ] and x:y", 1]]);
  expect(frag("(ratio: wide)")).toEqual([["ratio: wide", 1.1]]);
  expect(frag("")).toEqual([["", 1]]);
});

describe("chunks and encoding on the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => {
    pipe = await loadPipeline(builtin, { device: "cpu" });
  });
  afterAll(() => pipe.dispose());

  test("75 tokens per chunk, BOS/EOS/padding around each, a comma within 20 tokens back starts the next chunk", () => {
    const tok = pipe.tokenizer;
    const word = "apple", per = tok.encode(word).length - 2;
    expect(per).toBe(1);
    const short = weightedChunks(tok, "a red apple");
    expect(short).toHaveLength(1);
    expect(short[0].ids).toEqual(tok.encodePadded("a red apple"));
    const long = weightedChunks(tok, Array(100).fill(word).join(" "));
    expect(long.map((c) => c.ids.length)).toEqual([77, 77]);
    expect(long[0].ids.filter((id) => id === tok.tokenToId("apple</w>")).length).toBe(75);
    expect(long[1].ids.slice(0, 27)).toEqual([tok.bosTokenId, ...Array(25).fill(tok.tokenToId("apple</w>")), tok.eosTokenId]);
    // 70 words, a comma, 10 words: the chunk breaks after the comma (5 tokens back)
    const comma = weightedChunks(tok, `${Array(70).fill(word).join(" ")}, ${Array(10).fill(word).join(" ")}`);
    expect(comma[0].ids[71]).toBe(tok.tokenToId(",</w>"));
    expect(comma[0].ids[72]).toBe(tok.eosTokenId);
    expect(comma[1].ids.slice(1, 11)).toEqual(Array(10).fill(tok.tokenToId("apple</w>")));
    expect(weightedChunks(tok, "a BREAK b").length).toBe(2);
    expect(weightedChunks(tok, "(apple:1.5)")[0].weights.slice(0, 3)).toEqual([1, 1.5, 1]);
  });

  test("weights scale tokens and keep each chunk's mean; unweighted short prompts encode exactly as plain", async () => {
    const [plain] = [pipe.encodeTexts(["a red apple"])];
    const [same, heavy] = encodeWeightedTexts(pipe, ["a red apple", "a (red:1.8) apple"], 0);
    try {
      const [p, s, h] = [await plain.toFloat32Array(), await same.toFloat32Array(), await heavy.toFloat32Array()];
      expect(same.shape).toEqual([1, 77, pipe.textEncoder.config.hiddenSize]);
      expect(s).toEqual(p);
      const mean = (x: Float32Array) => x.reduce((a, b) => a + b, 0) / x.length;
      expect(Math.abs(mean(h) - mean(p))).toBeLessThan(1e-6);
      expect(h).not.toEqual(p);
    } finally {
      for (const t of [plain, same, heavy]) t.dispose();
    }
  });

  test("a prompt longer than 75 tokens: every CFG row gets 154 tokens, and the image depends on the tail", async () => {
    const long = `${Array(80).fill("apple").join(" ")}, a red heart`;
    const run = resolveCommon(pipe, { prompt: long, promptWeighting: true, negativePrompt: "blurry" }, "generate", GENERATE_KEYS);
    const cond = encodeConditioning(pipe, run, 64, 64);
    try {
      expect(cond.context.shape).toEqual([2, 154, pipe.textEncoder.config.hiddenSize]);
    } finally {
      disposeConditioning(cond);
      run.scheduler.dispose();
    }
    const opts = { steps: 2, seed: 1, promptWeighting: true };
    const a = await pipe.generate({ ...opts, prompt: long });
    const b = await pipe.generate({ ...opts, prompt: `${Array(80).fill("apple").join(" ")}, a blue car` });
    expect(a.images[0].data).not.toEqual(b.images[0].data);
    // without weighting the tail is cut off, as in diffusers
    const c = await pipe.generate({ steps: 2, seed: 1, prompt: long }), d = await pipe.generate({ steps: 2, seed: 1, prompt: `${Array(80).fill("apple").join(" ")}, a blue car` });
    expect(c.images[0].data).toEqual(d.images[0].data);
    await expect(pipe.generate({ prompt: "x", steps: 1, promptWeighting: "yes" as never })).rejects.toThrow(/promptWeighting must be a boolean/);
    // several prompts (one long), several images each: every row padded to the longest, in diffusers' row order
    const run2 = resolveCommon(pipe, { prompt: ["a (red:1.3) apple", long], numImages: 2, promptWeighting: true, negativePrompt: ["", "blurry"] }, "generate", GENERATE_KEYS);
    const cond2 = encodeConditioning(pipe, run2, 64, 64);
    try {
      expect(cond2.context.shape).toEqual([8, 154, pipe.textEncoder.config.hiddenSize]);
      const rows = await cond2.context.toFloat32Array(), per = 154 * pipe.textEncoder.config.hiddenSize;
      const row = (k: number) => rows.subarray(k * per, (k + 1) * per);
      expect(row(4)).toEqual(row(5));        // image 2 of prompt 1 repeats image 1
      expect(row(4)).not.toEqual(row(6));    // prompt 2's rows differ
      expect(row(0)).not.toEqual(row(2));    // negatives "" and "blurry"
    } finally {
      disposeConditioning(cond2);
      run2.scheduler.dispose();
    }
  });
});

describeIfReference("prompt weighting on SDXL (tiny-sdxl)", () => {
  test("unweighted short prompts match the plain SDXL encoding; long ones give 77·k tokens and one pooled row each", async () => {
    const pipe = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    try {
      const conds = [false, true].map((promptWeighting) => {
        const run = resolveCommon(pipe, { prompt: "a cat wearing a hat", negativePrompt: "ugly", promptWeighting }, "generate", GENERATE_KEYS);
        run.scheduler.dispose();
        return encodeConditioning(pipe, run, 128, 128);
      });
      try {
        const [a, b] = [await conds[0].context.toFloat32Array(), await conds[1].context.toFloat32Array()];
        let worst = 0;
        for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
        expect(worst).toBeLessThan(1e-6);
        expect(conds[1].added!.textEmbeds.shape).toEqual([2, 32]);
      } finally {
        conds.forEach(disposeConditioning);
      }
      const run = resolveCommon(pipe, { prompt: Array(90).fill("cat").join(" "), promptWeighting: true }, "generate", GENERATE_KEYS);
      run.scheduler.dispose();
      const cond = encodeConditioning(pipe, run, 128, 128);
      try {
        expect([cond.context.shape, cond.added!.textEmbeds.shape]).toEqual([[2, 154, 40], [2, 32]]);
      } finally {
        disposeConditioning(cond);
      }
      const r = await pipe.generate({ prompt: "a (cat:1.4) BREAK wearing a hat", steps: 2, seed: 1, promptWeighting: true });
      expect(r.images).toHaveLength(1);
    } finally {
      pipe.dispose();
    }
  });
});
