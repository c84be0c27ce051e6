// Splitting a generation between two calls (diffusers' denoising_end / denoising_start, SDXL's
// "ensemble of expert denoisers"): outputType "latent" hands back the latents that decodeLatents
// turns into the same image; generate({ denoisingEnd }) + img2img({ initLatents, denoisingStart })
// on the same model with a one-step sampler is exactly the whole generation, the two calls running
// complementary steps; the options are checked.
import * as fs from "fs";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { Tensor } from "../../lib/tensor";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const describeIfBuiltin = fs.existsSync(path.join(builtin, "model_index.json")) ? describe : describe.skip;

describeIfBuiltin("denoisingEnd / denoisingStart / outputType on the built-in model", () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => { pipe = await loadPipeline(builtin, { device: "cpu" }); });
  afterAll(() => pipe?.dispose());
  const base = { prompt: "a red apple", steps: 10, cfg: 5, seed: 3 };

  test("outputType 'latent': no images, the latents, which decodeLatents turns into the image generate draws", async () => {
    const r = await pipe.generate({ ...base, outputType: "latent" });
    expect(r.images).toEqual([]);
    expect(r.latents!.shape).toEqual([1, 4, 16, 16]);
    const t = Tensor.fromArray(r.latents!.data, r.latents!.shape);
    const decoded = await pipe.decodeLatents(t);
    t.dispose();
    expect(Buffer.from(decoded.images[0].data).equals(Buffer.from((await pipe.generate(base)).images[0].data))).toBe(true);
    const fromResult = await pipe.decodeLatents(r.latents!);  // the result's { data, shape } as it is
    expect(Buffer.from(fromResult.images[0].data).equals(Buffer.from(decoded.images[0].data))).toBe(true);
  });

  test.each(["euler", "ddim"] as const)("%s: generate to 0.6 then img2img from 0.6 is the whole generation, in complementary steps", async (sampler) => {
    const whole = await pipe.generate({ ...base, sampler });
    const first: number[] = [], second: number[] = [];
    const head = await pipe.generate({ ...base, sampler, denoisingEnd: 0.6, outputType: "latent", onStep: (s) => { first.push(s.timestep); } });
    const tail = await pipe.img2img({ ...base, sampler, initLatents: head.latents!, denoisingStart: 0.6, onStep: (s) => { second.push(s.timestep); } });
    expect(first.length + second.length).toBe(10);
    expect(Math.min(...first)).toBeGreaterThanOrEqual(400);  // diffusers' cutoff: round(1000 - 0.6 * 1000)
    expect(Math.max(...second)).toBeLessThan(400);
    expect(Buffer.from(tail.images[0].data).equals(Buffer.from(whole.images[0].data))).toBe(true);
    expect(tail.images[0].parameters?.extra?.["Denoising start"]).toBe(0.6);
  });

  test("img2img from latents without denoisingStart noises them to strength's start, as an encoded image would be", async () => {
    const head = await pipe.generate({ ...base, outputType: "latent" });
    const r = await pipe.img2img({ ...base, initLatents: head.latents!, strength: 0.5, numImages: 2 });
    expect(r.images).toHaveLength(2);
    expect(Buffer.from(r.images[0].data).equals(Buffer.from(r.images[1].data))).toBe(false);  // each image's own noise
  });

  test("refused: bad fractions and outputType, image and initLatents together or neither, shapes, hires with denoisingEnd", async () => {
    const latents = { data: new Float32Array(4 * 16 * 16), shape: [1, 4, 16, 16] };
    await expect(pipe.generate({ ...base, denoisingEnd: 1 })).rejects.toThrow(/denoisingEnd must be a number in \(0, 1\)/);
    await expect(pipe.generate({ ...base, denoisingEnd: 0.5, hires: true })).rejects.toThrow(/does not combine with hires/);
    await expect(pipe.generate({ ...base, outputType: "pil" as never })).rejects.toThrow(/outputType must be "image" or "latent"/);
    await expect(pipe.img2img({ ...base })).rejects.toThrow(/give image .* or initLatents, one of them/);
    const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3) };
    await expect(pipe.img2img({ ...base, image, initLatents: latents })).rejects.toThrow(/one of them/);
    await expect(pipe.img2img({ ...base, initLatents: { data: new Float32Array(3), shape: [1, 3, 1, 1] } })).rejects.toThrow(/initLatents must be \[1 or 1, 4, h, w\]/);
    await expect(pipe.img2img({ ...base, initLatents: { data: new Float32Array(3), shape: [1, 4, 16, 16] } })).rejects.toThrow(/initLatents.data must be a Float32Array of 1024 values/);
    await expect(pipe.img2img({ ...base, initLatents: latents, width: 64 })).rejects.toThrow(/width and height come from initLatents/);
    await expect(pipe.img2img({ ...base, initLatents: latents, denoisingStart: 0 })).rejects.toThrow(/denoisingStart must be a number in \(0, 1\)/);
    const mask = { width: 64, height: 64, data: new Uint8Array(64 * 64) };
    await expect(pipe.inpaint({ ...base, image, mask, keepUnmasked: true, outputType: "latent" })).rejects.toThrow(/keepUnmasked pastes pixels/);
  });
});
