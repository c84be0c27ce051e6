// Hires fix: torch-style bilinear latent resize, the two passes (the second at scale x the size,
// starting from the upscaled first pass noised to strength), both upscale modes, the A1111
// parameters, reproducibility, and the errors.
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { bilinearResize, hiresSize } from "../../lib/pipelines/hires-fix";
import { memoryStats, synchronize } from "../../lib";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

test("bilinear resize as torch's F.interpolate(align_corners=False): known values and an identity", () => {
  // 1x1x2x2 -> 4x4: torch gives rows [1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, ...], [3, 3.25, 3.75, 4]
  const out = bilinearResize(Float32Array.from([1, 2, 3, 4]), [1, 1, 2, 2], 4, 4);
  expect(Array.from(out)).toEqual([1, 1.25, 1.75, 2, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3, 3.25, 3.75, 4]);
  const x = Float32Array.from({ length: 2 * 3 * 5 }, (_, i) => Math.sin(i));
  expect(bilinearResize(x, [1, 2, 3, 5], 3, 5)).toEqual(x);
  expect(hiresSize(64, 48, 1.5, 8)).toEqual({ width: 96, height: 72 });
  expect(hiresSize(64, 40, 1.3, 8)).toEqual({ width: 80, height: 56 });
});

describe("generate({ hires }) on the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => {
    pipe = await loadPipeline(builtin, { device: "cpu" });
  });
  afterAll(() => pipe.dispose());

  test("two passes: the image comes out at scale x the size, records A1111's hires parameters and reproduces", async () => {
    const seen: number[][] = [];
    const opts = { prompt: "a red apple", steps: 4, seed: 2, width: 32, height: 32 };
    const r = await pipe.generate({ ...opts, hires: { scale: 2, strength: 0.5, steps: 4 }, onStep: ({ step, total, latents }) => { seen.push([step, total, latents.shape[2]]); } });
    expect([r.images[0].width, r.images[0].height]).toEqual([64, 64]);
    expect(seen).toEqual([[1, 4, 8], [2, 4, 8], [3, 4, 8], [4, 4, 8], [1, 2, 16], [2, 2, 16]]);  // strength 0.5 of 4 steps: 2 more at 16x16 latents
    expect(r.images[0].parametersText).toMatch(/Size: 32x32, .*Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent/);
    const again = await pipe.generate({ ...opts, hires: { scale: 2, strength: 0.5, steps: 4 } });
    expect(again.images[0].data).toEqual(r.images[0].data);
    const image = await pipe.generate({ ...opts, hires: { upscale: "image" } });
    expect([image.images[0].width, image.images[0].parametersText.includes("Hires upscaler: Image")]).toEqual([64, true]);
    expect(image.images[0].data).not.toEqual(r.images[0].data);
  });

  test("no tensor outlives it; bad options are named", async () => {
    const before = memoryStats("cpu").bytesInUse;
    await pipe.generate({ prompt: "x", steps: 2, seed: 1, width: 32, height: 32, hires: true });
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);
    const base = { prompt: "x", steps: 2, width: 32, height: 32 };
    await expect(pipe.generate({ ...base, hires: { scale: 1 } })).rejects.toThrow(/hires.scale must be a number in \(1, 4\]/);
    await expect(pipe.generate({ ...base, hires: { strength: 2 } })).rejects.toThrow(/hires: strength must be a number in \(0, 1\]/);
    await expect(pipe.generate({ ...base, hires: { upscale: "esrgan" as never } })).rejects.toThrow(/hires.upscale must be "latent" or "image"/);
    await expect(pipe.generate({ ...base, hires: { strength: 0.1, steps: 4 } })).rejects.toThrow(/leaves no step to run/);
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);
  });
});
