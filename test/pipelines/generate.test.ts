// generate() / img2img() behaviour on tiny-sd: seeds reproduce diffusers' CPU-generator latents,
// per-image seeds, determinism, abort (rejects with AbortError, frees every tensor), option errors,
// previews, guidance rescale, clip skip, and image I/O (PNG parameters chunk, JPEG/PNG inputs).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as jpeg from "jpeg-js";
import { Tensor, memoryStats, synchronize, TorchGenerator } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { loadPipeline, readPNGText, GeneratedImage, decodeImageBytes, type StableDiffusionPipeline } from "../../lib/pipelines";
import { drawNoise, rescaleNoiseCfg } from "../../lib/pipelines/text-to-image";
import { formatParameters, resizeImage, centerCrop } from "../../lib/pipelines/images";
import { decodedPixelsOf } from "../../lib/pipelines/decoded-pixels";
import { describeIfReference, referencePath } from "../helpers/reference";

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection, but the promise resolved");
}

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);

describeIfReference("generate() on tiny-sd", () => {
  let pipe: StableDiffusionPipeline;
  let randn: SafetensorsFile;
  let tmp: string;
  beforeAll(async () => {
    pipe = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu" });
    randn = SafetensorsFile.open(referencePath("cases", "torch_randn.safetensors"));
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-pipe-"));
  });
  afterAll(() => {
    pipe?.dispose();
    randn?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const small = { prompt: "a cat wearing a hat", width: 32, height: 32, steps: 2, sampler: "ddim" } as const;

  test("defaults: size is sample_size x scale factor, components and scheduler config are exposed", () => {
    expect(pipe.defaultSize).toEqual({ width: 64, height: 64 });
    expect(pipe.vaeScaleFactor).toBe(4);
    expect(pipe.scheduler["_class_name"]).toBe("PNDMScheduler");
    expect(pipe.device).toBe("cpu");
    expect(pipe.dtype).toBe("float32");
    expect(pipe.tokenizer.maxLength).toBe(77);
  });

  test("seed 42 starts from diffusers' randn_tensor(generator=torch.Generator('cpu').manual_seed(42)) latents", async () => {
    const want = randn.readFloat32("diffusers.randn_tensor.gen42.1x4x64x64");
    const drawn = drawNoise([1, 4, 64, 64], [new TorchGenerator(42)]);
    expect(Buffer.from(drawn.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // end to end: the seeded run equals the run given those latents (1 DDIM step, no CFG, 256x256)
    const opts = { prompt: "a cat", width: 256, height: 256, steps: 1, cfg: 1, sampler: "ddim" };
    const a = await pipe.generate({ ...opts, seed: 42 });
    const b = await pipe.generate({ ...opts, latents: want });
    expect(a.seeds).toEqual([42]);
    expect(same(a.images[0].data, b.images[0].data)).toBe(true);
  });

  test("numImages: image k gets seed + k (diffusers' list-of-generators latents) and reproduces alone", async () => {
    const want = randn.readFloat32("diffusers.randn_tensor.genlist1_2.2x4x8x8");
    const opts = { ...small, cfg: 1, steps: 1 };
    const a = await pipe.generate({ ...opts, seed: 1, numImages: 2 });
    const b = await pipe.generate({ ...opts, numImages: 2, latents: want });
    expect(a.seeds).toEqual([1, 2]);
    expect(a.images.map((im, i) => same(im.data, b.images[i].data))).toEqual([true, true]);
    // a stochastic sampler: step noise also comes from each image's own generator
    const pair = await pipe.generate({ ...small, sampler: "euler-a", seed: 10, numImages: 2 });
    const alone = await pipe.generate({ ...small, sampler: "euler-a", seed: 11 });
    expect(same(pair.images[1].data, alone.images[0].data)).toBe(true);
    expect(same(pair.images[0].data, pair.images[1].data)).toBe(false);
  });

  test("the same seed gives the same image, another seed another; no seed draws a random one", async () => {
    const a = await pipe.generate({ ...small, seed: 5 });
    const b = await pipe.generate({ ...small, seed: 5 });
    const c = await pipe.generate({ ...small, seed: 6 });
    expect(same(a.images[0].data, b.images[0].data)).toBe(true);
    expect(same(a.images[0].data, c.images[0].data)).toBe(false);
    const r = await pipe.generate({ ...small, steps: 1 });
    expect(Number.isInteger(r.seeds[0]) && r.seeds[0] >= 0 && r.seeds[0] < 2 ** 32).toBe(true);
    expect(r.timings.encode).toBeGreaterThanOrEqual(0);
    expect(r.timings.denoise).toBeGreaterThan(0);
    expect(r.timings.decode).toBeGreaterThan(0);
  });

  test("abort between steps rejects with an AbortError and frees every tensor", async () => {
    const opts = { prompt: "a cat", negativePrompt: "blurry", width: 64, height: 64, steps: 8, sampler: "dpm++2m-karras", seed: 3 };
    await pipe.generate({ ...opts, steps: 1 });  // warm the allocator
    // op outputs take memory when the queue runs them: wait for it before each count. "<=": a GC
    // finalizer may free an earlier suite's garbage meanwhile (a leak still shows as more)
    const inUse = async () => { await synchronize("cpu"); return memoryStats("cpu").bytesInUse; };
    const before = await inUse();
    const ac = new AbortController();
    const seen: number[] = [];
    const err = await rejection(pipe.generate({ ...opts, signal: ac.signal, onStep: ({ step }) => { seen.push(step); if (step === 3) ac.abort(); } }));
    expect(err.name).toBe("AbortError");
    expect(seen).toEqual([1, 2, 3]);
    expect(await inUse()).toBeLessThanOrEqual(before);
    // already aborted: nothing runs
    const err2 = await rejection(pipe.generate({ ...opts, signal: AbortSignal.abort(), onStep: () => { throw new Error("ran"); } }));
    expect(err2.name).toBe("AbortError");
    expect(await inUse()).toBeLessThanOrEqual(before);
    // an error thrown by onStep rejects too, and also frees everything
    const err3 = await rejection(pipe.generate({ ...opts, onStep: () => { throw new Error("callback failed"); } }));
    expect(err3.message).toBe("callback failed");
    expect(await inUse()).toBeLessThanOrEqual(before);
  });

  test("bad options are RangeErrors that list what is allowed", async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ sampler: "euler_a" }, /sampler must be one of .*"euler-a".*"dpm\+\+2m-karras".*"default", got "euler_a"/],
      [{ width: 30 }, /width must be a positive multiple of 4 \(the VAE scale factor\)/],
      [{ height: 0 }, /height must be a positive multiple of 4/],
      [{ steps: 0 }, /steps must be an integer in \[1, 1000\], got 0/],
      [{ steps: 2.5 }, /steps must be an integer/],
      [{ cfg: -1 }, /cfg must be a number in \[0, inf\]/],
      [{ numImages: 0 }, /numImages must be an integer in \[1, /],
      [{ seed: -1 }, /seed must be an integer in \[0, /],
      [{ guidanceRescale: 2 }, /guidanceRescale must be a number in \[0, 1\]/],
      [{ clipSkip: 3 }, /clipSkip must be an integer in \[0, 2\]/],
      [{ guidance: 7 }, /unknown option "guidance" \(allowed: prompt, negativePrompt, steps, cfg, sampler/],
      [{ negativePrompt: ["a", "b"] }, /negativePrompt has 2 entries but prompt has 1/],
      [{ latents: new Float32Array(10) }, /latents must hold \[1, 4, 8, 8\] = 256 float32 values/],
    ];
    for (const [bad, msg] of cases) {
      const e = await rejection(pipe.generate({ ...small, ...bad } as never));
      expect([JSON.stringify(bad), e.name, e.message]).toEqual([JSON.stringify(bad), "RangeError", expect.stringMatching(msg)]);
    }
    const image = { width: 32, height: 32, data: new Uint8Array(32 * 32 * 3) };
    const e1 = await rejection(pipe.img2img({ ...small, image, strength: 0 }));
    expect([e1.name, e1.message]).toEqual(["RangeError", expect.stringMatching(/strength must be a number in \(0, 1\]/)]);
    const e2 = await rejection(pipe.img2img({ ...small, image, strength: 0.2 }));  // trunc(2 * 0.2) = 0 steps
    expect([e2.name, e2.message]).toEqual(["RangeError", expect.stringMatching(/leaves no step to run/)]);
    const e3 = await rejection(pipe.img2img({ ...small, image, latents: new Float32Array(256) } as never));
    expect(e3.message).toMatch(/unknown option "latents"/);
    const e4 = await rejection(loadPipeline(referencePath("models", "tiny-sd"), { dtype: "float64" as never }));
    expect([e4.name, e4.message]).toEqual(["RangeError", 'loadPipeline: dtype must be one of "float32", "float16", "bfloat16", got "float64"']);
    const e5 = await rejection(loadPipeline(referencePath("models", "tiny-sd"), { device: "tpu" }));
    expect([e5.name, e5.message]).toEqual(["RangeError", expect.stringMatching(/device must be one of "cpu", "cuda", "cuda:N", "auto"/)]);
  });

  test("previewEvery attaches latent previews; onStep sees every step with the scheduler's timesteps", async () => {
    const infos: { step: number; total: number; timestep: number; preview?: GeneratedImage }[] = [];
    await pipe.generate({ ...small, steps: 4, previewEvery: 2, seed: 1, onStep: (i) => { infos.push({ ...i }); } });
    expect(infos.map((i) => [i.step, i.total, i.timestep])).toEqual([[1, 4, 751], [2, 4, 501], [3, 4, 251], [4, 4, 1]]);
    expect(infos.map((i) => i.preview !== undefined)).toEqual([false, true, false, true]);
    const pv = infos[1].preview!;
    expect([pv.width, pv.height, pv.data.length]).toEqual([8, 8, 8 * 8 * 3]);
    expect(new Set(pv.data).size).toBeGreaterThan(4);  // not a flat image
  });

  test("schedulerConfig overrides the model's scheduler_config keys for one run (diffusers' from_config overrides)", async () => {
    const seen = async (o: Record<string, unknown>) => {
      const ts: number[] = [];
      await pipe.generate({ ...small, steps: 4, seed: 1, ...o, onStep: (i) => { ts.push(i.timestep); } });
      return ts;
    };
    expect(await seen({})).toEqual([751, 501, 251, 1]);  // leading + steps_offset 1
    expect(await seen({ schedulerConfig: { timestep_spacing: "trailing" } })).toEqual([999, 749, 499, 249]);
    expect(await seen({ sampler: "ddpm", schedulerConfig: { timestep_spacing: "linspace" } })).toEqual([999, 666, 333, 0]);
    // leading spacing at 1000 steps reaches t = 1000 (so does diffusers' DDPMScheduler); trailing is the full chain
    const { makeScheduler } = await import("../../lib/pipelines/text-to-image");
    const lead = makeScheduler(pipe, "generate", "ddpm").scheduler, trail = makeScheduler(pipe, "generate", "ddpm", { timestep_spacing: "trailing" }).scheduler;
    lead.setTimesteps(1000);
    trail.setTimesteps(1000);
    expect([lead.timesteps[0], trail.timesteps[0], trail.timesteps[999]]).toEqual([1000, 999, 0]);
    lead.dispose();
    trail.dispose();
    await expect(pipe.generate({ ...small, steps: 2, schedulerConfig: [] as unknown as Record<string, unknown> })).rejects.toThrow(/schedulerConfig must be an object/);
    await expect(pipe.generate({ ...small, steps: 2, schedulerConfig: { timestep_spacing: "sideways" } })).rejects.toThrow(/timestep_spacing/);
  });

  test("guidance rescale: phi = 1 gives the guided prediction with the text prediction's per-sample std", async () => {
    const g = Tensor.randn([2, 4, 5, 3], { seed: 1 }), t = Tensor.randn([2, 4, 5, 3], { seed: 2 });
    const out = rescaleNoiseCfg(g, t, 1), half = rescaleNoiseCfg(g, t, 0.5);
    const [G, T, O, H] = await Promise.all([g, t, out, half].map((x) => x.toFloat32Array()));
    for (const x of [g, t, out, half]) x.dispose();
    const std = (a: Float32Array, b: number) => {
      const s = a.subarray(b * 60, (b + 1) * 60), m = s.reduce((p, v) => p + v, 0) / 60;
      return Math.sqrt(s.reduce((p, v) => p + (v - m) ** 2, 0) / 59);
    };
    for (const b of [0, 1]) {
      expect(std(O, b)).toBeCloseTo(std(T, b), 5);
      const k = std(T, b) / std(G, b);
      for (let i = b * 60; i < (b + 1) * 60; i++) {
        expect(O[i]).toBeCloseTo(G[i] * k, 5);
        expect(H[i]).toBeCloseTo(0.5 * G[i] * k + 0.5 * G[i], 5);
      }
    }
    const a = await pipe.generate({ ...small, seed: 2 });
    const b = await pipe.generate({ ...small, seed: 2, guidanceRescale: 0.7 });
    expect(same(a.images[0].data, b.images[0].data)).toBe(false);
    expect(b.images[0].parametersText).toContain("CFG rescale: 0.7");
  });

  test("clipSkip uses an earlier text-encoder layer (prompt only, as diffusers) and is recorded A1111-style", async () => {
    const e0 = await pipe.encodePrompt("a cat"), e1 = await pipe.encodePrompt("a cat", { clipSkip: 1 });
    const [a, b] = [await e0.toFloat32Array(), await e1.toFloat32Array()];
    e0.dispose();
    e1.dispose();
    expect(a.some((v, i) => v !== b[i])).toBe(true);
    const r = await pipe.generate({ ...small, seed: 1, clipSkip: 1 });
    expect(r.images[0].parametersText).toContain("Clip skip: 2");
  });

  test("PNG round trip: pixels and the A1111 parameters chunk (Latin-1 tEXt and UTF-8 iTXt)", async () => {
    const r = await pipe.generate({ ...small, negativePrompt: "blurry", cfg: 7.5, seed: 7 });
    const img = r.images[0];
    expect(img.parametersText).toBe(
      "a cat wearing a hat\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 32x32, Model: tiny-sd");
    const file = path.join(tmp, "out.png");
    await img.savePNG(file);
    const buf = fs.readFileSync(file);
    expect(readPNGText(buf)).toEqual({ parameters: img.parametersText });
    const back = decodeImageBytes(buf);
    expect([back.width, back.height, same(back.data, img.data)]).toEqual([32, 32, true]);

    const uni = new GeneratedImage(2, 1, new Uint8Array([1, 2, 3, 4, 5, 6]), { ...img.parameters!, prompt: "猫, café ☕" });
    expect(readPNGText(uni.toPNG()).parameters).toBe(formatParameters({ ...img.parameters!, prompt: "猫, café ☕" }));
    expect(readPNGText(new GeneratedImage(1, 1, new Uint8Array(3)).toPNG())).toEqual({});
  });

  test("img2img takes PNG/JPEG files and buffers; odd sizes are centre-cropped, explicit sizes resized", async () => {
    const base = (await pipe.generate({ ...small, seed: 3 })).images[0];
    const png = path.join(tmp, "init.png");
    await base.savePNG(png);
    const fromPath = await pipe.img2img({ ...small, image: png, strength: 0.5, seed: 1 });
    const fromPixels = await pipe.img2img({ ...small, image: base, strength: 0.5, seed: 1 });
    expect(same(fromPath.images[0].data, fromPixels.images[0].data)).toBe(true);

    const rgba = new Uint8Array(34 * 33 * 4).map((_, i) => (i * 37) & 255);
    const jpg = jpeg.encode({ width: 34, height: 33, data: Buffer.from(rgba) }, 90).data;
    const r = await pipe.img2img({ ...small, image: jpg, strength: 0.5, seed: 1 });
    expect([r.images[0].width, r.images[0].height]).toEqual([32, 32]);
    const r2 = await pipe.img2img({ ...small, image: jpg, strength: 0.5, seed: 1, width: 16, height: 24 });
    expect([r2.images[0].width, r2.images[0].height]).toEqual([16, 24]);
    await expect(pipe.img2img({ ...small, image: Buffer.from("GIF89a....") })).rejects.toThrow(/not a PNG or JPEG/);

    const img = { width: 5, height: 3, data: new Uint8Array(45).map((_, i) => i) };
    const c = centerCrop(img, 4, 2);
    expect(Array.from(c.data.subarray(0, 3))).toEqual([0, 1, 2]);  // x0 = 0, y0 = 0
    const up = resizeImage({ width: 1, height: 1, data: new Uint8Array([10, 20, 30]) }, 3, 2);
    expect(Array.from(up.data)).toEqual([10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30]);
  });

  test("float -> uint8: clamp(d/2 + 0.5), float32 multiply by 255, numpy's round half to even; NaN -> NaN / 0", async () => {
    // images exactly (k + 0.5)/255 in float32 for k = 128, 129, 130, 200: 128.5 -> 128, 129.5 -> 130 ...
    const f = Math.fround;
    const imgs = [128.5, 129.5, 130.5, 200.5].map((k) => f(k / 255));
    const d = [...imgs.map((x) => 2 * (x - 0.5)), -3, 3, NaN];  // exact in float32: d/2 + 0.5 gives x back
    const { imageFloat, rgb, decoded } = await decodedPixelsOf(new Float32Array([...d, ...d, ...d]), [1, 3, 1, 7]);
    expect(Array.from({ length: 7 }, (_, i) => rgb[0][i * 3])).toEqual([128, 130, 130, 200, 0, 255, 0]);
    expect(Array.from(imageFloat.subarray(0, 4 * 3)).filter((_, i) => i % 3 === 0)).toEqual(imgs);
    expect([imageFloat[12], imageFloat[15], imageFloat[18]]).toEqual([0, 1, NaN]);
    expect(Array.from(decoded.subarray(0, 7))).toEqual(d.map(f));
  });

  test("float -> uint8 as diffusers' float32 numpy steps, pixel for pixel, NCHW -> NHWC, per batch item", async () => {
    const B = 2, H = 5, W = 7, n = B * 3 * H * W;
    const d = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 1.3);
    const { imageFloat, rgb } = await decodedPixelsOf(d, [B, 3, H, W]);
    const f = Math.fround;
    for (let b = 0; b < B; b++)
      for (let c = 0; c < 3; c++)
        for (let i = 0; i < H * W; i++) {
          const v = Math.min(1, Math.max(0, f(f(d[(b * 3 + c) * H * W + i] / 2) + 0.5)));
          const s = f(v * 255), r = Math.round(s);
          expect(imageFloat[(b * H * W + i) * 3 + c]).toBe(v);
          expect(rgb[b][i * 3 + c]).toBe(r - s === 0.5 && r % 2 !== 0 ? r - 1 : r);
        }
  });

  test("a disposed pipeline refuses work", async () => {
    const p2 = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu" });
    p2.dispose();
    await expect(p2.generate(small)).rejects.toThrow(/disposed/);
  });
});
