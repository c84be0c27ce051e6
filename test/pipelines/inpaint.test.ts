// inpaint() beyond the golden case: mask helpers (PIL's luma, binarising at 128, nearest latent
// mask, fitting), the 4-channel blend on the built-in model (the kept area ends as the image's own
// latents), diffusers' draw order, keepUnmasked, mask input forms and the errors.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { createRandomPipeline, loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { encodePNG, imageToNchw, type RGBImage } from "../../lib/pipelines/images";
import { encodePosteriorSamples } from "../../lib/pipelines/image-to-image";
import { fitMask, latentMask, loadMask, maskCondition, pasteUnmasked, rgbToGray, type GrayImage } from "../../lib/pipelines/mask";
import { ReplayNoise } from "./pipeline-helpers";
import { inpaint as inpaintOnce, releasePipelines } from "../../lib/generate";
import { randn, toF32 } from "../helpers/naive";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

function pattern(W: number, H: number): RGBImage {
  const data = new Uint8Array(W * H * 3);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) data.set([(x * 255) / (W - 1), (y * 255) / (H - 1), ((x + y) * 97) % 256], 3 * (y * W + x));
  return { width: W, height: H, data };
}

/** Right half white (repaint), left half black. */
function halfMask(W: number, H: number): GrayImage {
  const data = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) for (let x = W / 2; x < W; x++) data[y * W + x] = 255;
  return { width: W, height: H, data };
}

describe("mask helpers", () => {
  test("grey conversion is PIL's convert('L'): grey stays exact, colours by ITU-R 601-2 luma", () => {
    const g = rgbToGray({ width: 4, height: 1, data: Uint8Array.from([0, 0, 0, 200, 200, 200, 255, 0, 0, 10, 20, 30]) });
    // 255·0.299 = 76.245 -> 76; 10·0.299 + 20·0.587 + 30·0.114 = 18.15 -> 18
    expect(Array.from(g.data)).toEqual([0, 200, 76, 18]);
  });

  test("binarised at byte 128 (128/255 >= 0.5 > 127/255); the latent mask takes pixel (i·f, j·f)", () => {
    const m = { width: 4, height: 2, data: Uint8Array.from([0, 127, 128, 255, 255, 128, 127, 0]) };
    expect(Array.from(maskCondition(m))).toEqual([0, 0, 1, 1, 1, 1, 0, 0]);
    expect(Array.from(latentMask(maskCondition(m), 2, 4, 1, 2))).toEqual([0, 1]);
  });

  test("fitting: the same centre crop as the image when only rounding, resized otherwise", () => {
    const m = { width: 6, height: 4, data: Uint8Array.from({ length: 24 }, (_, i) => (i % 6) * 40) };
    const cropped = fitMask(m, { width: 6, height: 4 }, 4, 4, true);
    expect(Array.from(cropped.data.slice(0, 4))).toEqual([40, 80, 120, 160]);
    const resized = fitMask({ width: 2, height: 2, data: Uint8Array.from([0, 255, 0, 255]) }, { width: 8, height: 8 }, 8, 8, true);
    expect([resized.width, resized.height]).toEqual([8, 8]);
    expect(resized.data[0]).toBe(0);
    expect(resized.data[7]).toBe(255);
  });

  test("paste-back: mask 0 keeps the original, 255 the generated pixel, grey blends", () => {
    const out = pasteUnmasked(Uint8Array.from([200, 200, 200, 200, 200, 200, 200, 200, 200]), { width: 3, height: 1, data: Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0]) }, { width: 3, height: 1, data: Uint8Array.from([0, 255, 128]) });
    expect(Array.from(out)).toEqual([0, 0, 0, 200, 200, 200, 100, 100, 100]);
  });

  test("loadMask: grey bytes pass through; RGB pixels and a PNG file give the same grey", async () => {
    const rgb = pattern(8, 8);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dk-mask-")), "m.png");
    fs.writeFileSync(file, encodePNG(rgb));
    const fromRgb = await loadMask(rgb), fromPng = await loadMask(file);
    expect(fromPng.data).toEqual(fromRgb.data);
    expect(fromRgb.data).toEqual(rgbToGray(rgb).data);
    const grey = halfMask(8, 8);
    expect((await loadMask(grey)).data).toBe(grey.data);
    await expect(loadMask({ width: 8, height: 8, data: new Uint8Array(10) })).rejects.toThrow(/mask: data must be a Uint8Array/);
  });
});

describe("inpaint() on the built-in model (4-channel U-Net: blending)", () => {
  let pipe: StableDiffusionPipeline;
  const img = pattern(64, 64), mask = halfMask(64, 64);
  beforeAll(async () => {
    pipe = await loadPipeline(builtin, { device: "cpu" });
  });
  afterAll(() => pipe.dispose());

  test("draws in diffusers' order (image posterior, start noise, masked-image posterior); the kept half ends as the image's latents", async () => {
    const draws = [0, 1, 2].map((k) => toF32(randn([1, 4, 16, 16], 5 + k)));
    const noise = new ReplayNoise(draws);
    let last: Float32Array | null = null;
    await pipe.inpaint({ image: img, mask, prompt: "a red apple", steps: 4, sampler: "ddim", generator: noise, onStep: async ({ latents, step, total }) => {
      if (step === total) last = await latents.toFloat32Array();
    } });
    expect(noise.used).toBe(3);
    expect(noise.calls).toEqual([[1, 4, 16, 16], [1, 4, 16, 16], [1, 4, 16, 16]]);
    const want = await encodePosteriorSamples(pipe, imageToNchw(img), 64, 64, [draws[0]]);
    const ref = await want.toFloat32Array();
    want.dispose();
    let keptSame = true, repaintedDiffers = false;
    for (let c = 0; c < 4; c++)
      for (let y = 0; y < 16; y++)
        for (let x = 0; x < 16; x++) {
          const i = (c * 16 + y) * 16 + x;
          if (x < 8) keptSame &&= last![i] === ref[i];
          else repaintedDiffers ||= last![i] !== ref[i];
        }
    expect(keptSame).toBe(true);
    expect(repaintedDiffers).toBe(true);
  });

  test("keepUnmasked pastes the original pixels outside the mask; inside it is the generated image", async () => {
    const opts = { image: img, mask, prompt: "a red apple", steps: 3, seed: 4 };
    const plain = (await pipe.inpaint(opts)).images[0];
    const kept = (await pipe.inpaint({ ...opts, keepUnmasked: true })).images[0];
    let leftSame = true, rightSame = true, plainLeftDiffers = false;
    for (let y = 0; y < 64; y++)
      for (let x = 0; x < 64; x++)
        for (let c = 0; c < 3; c++) {
          const i = 3 * (y * 64 + x) + c;
          if (x < 32) {
            leftSame &&= kept.data[i] === img.data[i];
            plainLeftDiffers ||= plain.data[i] !== img.data[i];  // the VAE round trip is not exact
          } else rightSame &&= kept.data[i] === plain.data[i];
        }
    expect([leftSame, rightSame, plainLeftDiffers]).toEqual([true, true, true]);
  });

  test("same seed, same image; strength below 1 starts from the image and is recorded", async () => {
    const opts = { image: img, mask, prompt: "a red apple", steps: 4, seed: 9, strength: 0.5 };
    const a = await pipe.inpaint(opts), b = await pipe.inpaint(opts);
    expect(a.images[0].data).toEqual(b.images[0].data);
    expect(a.images[0].parametersText).toContain("Denoising strength: 0.5");
  });

  test("the one-call inpaint() runs the built-in model (cached pipeline) with the same result as pipe.inpaint()", async () => {
    try {
      const opts = { image: img, mask, prompt: "a red apple", steps: 2, seed: 6 };
      const one = await inpaintOnce({ ...opts, device: "cpu" });
      expect(one.images[0].data).toEqual((await pipe.inpaint(opts)).images[0].data);
    } finally {
      await releasePipelines();
    }
  });

  test("bad input: named errors", async () => {
    const base = { image: img, mask, prompt: "x", steps: 2 };
    await expect(pipe.inpaint({ ...base, mask: undefined as never })).rejects.toThrow(/inpaint: mask is required/);
    await expect(pipe.inpaint({ ...base, image: undefined as never })).rejects.toThrow(/inpaint: image is required/);
    await expect(pipe.inpaint({ ...base, strength: 0 })).rejects.toThrow(/strength must be a number in \(0, 1\]/);
    await expect(pipe.inpaint({ ...base, strength: 0.1 })).rejects.toThrow(/leaves no step to run/);
    await expect(pipe.inpaint({ ...base, keepUnmasked: "yes" as never })).rejects.toThrow(/keepUnmasked must be a boolean/);
    await expect(pipe.inpaint({ ...base, maskBlur: 4 } as never)).rejects.toThrow(/unknown option "maskBlur"/);
    await expect(pipe.inpaint({ ...base, latents: new Float32Array(3) })).rejects.toThrow(/latents must hold \[1, 4, 16, 16\]/);
  });
});

test("U-Net input channels: 4 (blend) and 9 (inpainting U-Net) make a pipeline, others are refused by name", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-inpaint-cfg-"));
  try {
    for (const sub of ["unet", "vae", "text_encoder", "scheduler", "tokenizer"]) fs.cpSync(path.join(builtin, sub), path.join(tmp, sub), { recursive: true, filter: (f) => !f.endsWith(".safetensors") });
    const unetCfg = path.join(tmp, "unet", "config.json");
    const cfg = JSON.parse(fs.readFileSync(unetCfg, "utf8"));
    fs.writeFileSync(unetCfg, JSON.stringify({ ...cfg, in_channels: 5 }));
    await expect(createRandomPipeline(tmp, { device: "cpu" })).rejects.toThrow(/the U-Net takes 5 channels .* takes 4, or 9 for inpainting/);
    fs.writeFileSync(unetCfg, JSON.stringify({ ...cfg, in_channels: 9 }));
    const p = await createRandomPipeline(tmp, { device: "cpu" });
    try {
      expect(p.isInpaintingModel).toBe(true);
      const r = await p.inpaint({ image: pattern(32, 32), mask: halfMask(32, 32), prompt: "x", steps: 2, seed: 1 });
      expect([r.images[0].width, r.images[0].height]).toEqual([32, 32]);
      await expect(p.generate({ prompt: "x", steps: 1 })).rejects.toThrow(/inpainting model/);
    } finally {
      p.dispose();
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
