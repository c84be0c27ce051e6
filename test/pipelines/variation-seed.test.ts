// A1111 variation seeds on the built-in model: strength 0 is the seed's image, strength 1 the
// variation seed's (a deterministic sampler then draws exactly that seed's image), in between a
// different image recorded in the PNG parameters as A1111 writes them; A1111's slerp and its
// near-parallel fallback; what does not combine is refused; the CLI flags.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { readPNGText } from "../../lib/pipelines/images";
import { slerpA1111 } from "../../lib/pipelines/variation-seed";
import { assertBuilt, runCli } from "../cli/run";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const describeIfBuiltin = fs.existsSync(path.join(builtin, "model_index.json")) ? describe : describe.skip;

test("A1111's slerp: endpoints exact, norms along H per channel and column, the parallel fallback low·val + high·(1-val)", () => {
  const [C, H, W] = [2, 3, 2];
  const low = Float32Array.from({ length: C * H * W }, (_, i) => Math.sin(i + 1)), high = Float32Array.from({ length: C * H * W }, (_, i) => Math.cos(3 * i));
  expect(slerpA1111(0, low, high, C, H, W)).toEqual(low);
  expect(slerpA1111(1, low, high, C, H, W)).toEqual(high);
  // one column by hand: (c, w) = (1, 0), values along H
  const col = (x: Float32Array) => [0, 1, 2].map((h) => x[(1 * H + h) * W + 0]);
  const [l, hi] = [col(low), col(high)];
  const n = (v: number[]) => Math.hypot(...v);
  const omega = Math.acos(l.reduce((a, v, i) => a + (v / n(l)) * (hi[i] / n(hi)), 0));
  const mid = col(slerpA1111(0.3, low, high, C, H, W));
  mid.forEach((v, i) => expect(v).toBeCloseTo((Math.sin(0.7 * omega) * l[i] + Math.sin(0.3 * omega) * hi[i]) / Math.sin(omega), 5));
  // parallel inputs take the fallback, with A1111's weights as written
  const twice = low.map((v) => 2 * v);
  expect(slerpA1111(0.25, low, twice, C, H, W)).toEqual(low.map((v, i) => Math.fround(v * 0.25 + twice[i] * 0.75)));
});

describeIfBuiltin("generate({ variation })", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => { pipe = await loadPipeline(builtin, { device: "cpu" }); });
  afterAll(() => pipe?.dispose());
  const opts = { prompt: "a red apple", steps: 6, seed: 5, sampler: "euler" as const };
  const px = async (o: Record<string, unknown>) => Buffer.from((await pipe.generate({ ...opts, ...o })).images[0].data);

  test("strength 0 is the seed's image, 1 the variation seed's, 0.3 another one; the PNG records it as A1111 does", async () => {
    const plain = await px({});
    expect((await px({ variation: { seed: 9, strength: 0 } })).equals(plain)).toBe(true);
    expect((await px({ variation: { seed: 9, strength: 1 } })).equals(await px({ seed: 9 }))).toBe(true);
    const r = await pipe.generate({ ...opts, numImages: 2, variation: { seed: 9, strength: 0.3 } });
    expect(Buffer.from(r.images[0].data).equals(plain)).toBe(false);
    const text = readPNGText(r.images[1].toPNG()).parameters;
    expect(text).toMatch(/Seed: 6, .*Variation seed: 10, Variation seed strength: 0\.3/);
  });

  test("refused: with latents or a generator, bad seeds and strengths, unknown keys", async () => {
    await expect(pipe.generate({ ...opts, latents: new Float32Array(4 * 16 * 16), variation: { seed: 1, strength: 0.5 } })).rejects.toThrow(/does not combine with latents or generator/);
    await expect(pipe.generate({ ...opts, variation: { seed: -1, strength: 0.5 } })).rejects.toThrow(/variation.seed must be a non-negative integer/);
    await expect(pipe.generate({ ...opts, variation: { seed: 1, strength: 2 } })).rejects.toThrow(/variation.strength must be in \[0, 1\]/);
    await expect(pipe.generate({ ...opts, variation: { seed: 1, strength: 0.5, resize: true } as never })).rejects.toThrow(/variation has no option "resize"/);
  });

  test("the CLI: --variation-seed (strength 0.1 by default) and --variation-strength", () => {
    assertBuilt();
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-variation-"));
    try {
      const out = path.join(tmp, "v.png");
      const r = runCli(["generate", "a red apple", "--steps", "2", "--seed", "1", "--variation-seed", "7", "-q", "-o", out]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      expect(readPNGText(fs.readFileSync(out)).parameters).toMatch(/Variation seed: 7, Variation seed strength: 0\.1/);
      const bad = runCli(["generate", "a red apple", "--variation-strength", "0.5"]);
      expect([bad.code, bad.stderr.trim()]).toEqual([2, "diffusekit: --variation-strength goes with --variation-seed"]);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
