// The VAE's precision as a load option (vaeDtype): "auto" is diffusers' rule (force_upcast keeps an
// fp16 VAE in float32), an explicit dtype loads the VAE in it; bad values are named errors; the
// one-call API caches one pipeline per choice. Uses the built-in model (tracked in the repo).
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { vaeDTypeFor } from "../../lib/pipelines/load";
import { AutoencoderKL } from "../../lib/models/autoencoder-kl";
import { getPipeline, releasePipelines } from "../../lib/generate";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");

test("vaeDTypeFor: auto follows diffusers' force_upcast; an explicit dtype wins", () => {
  const upcast = new AutoencoderKL({ block_out_channels: [8], down_block_types: ["DownEncoderBlock2D"], up_block_types: ["UpDecoderBlock2D"], norm_num_groups: 4, force_upcast: true });
  const plain = new AutoencoderKL({ block_out_channels: [8], down_block_types: ["DownEncoderBlock2D"], up_block_types: ["UpDecoderBlock2D"], norm_num_groups: 4, force_upcast: false });
  expect(vaeDTypeFor(upcast, "float16", "cuda")).toBe("float32");
  expect(vaeDTypeFor(plain, "float16", "cuda")).toBe("float16");
  expect(vaeDTypeFor(upcast, "bfloat16", "cuda")).toBe("bfloat16");  // diffusers upcasts only float16
  expect(vaeDTypeFor(upcast, "bfloat16", "cpu")).toBe("float32");    // faster and exact on the CPU
  expect(vaeDTypeFor(upcast, "float16", "cuda", "bfloat16")).toBe("bfloat16");
  expect(vaeDTypeFor(upcast, "float32", "cpu", "bfloat16")).toBe("bfloat16");
  expect(vaeDTypeFor(upcast, "float16", "cuda", "auto")).toBe("float32");
  upcast.dispose(); plain.dispose();
});

describe("loadPipeline vaeDtype (built-in model, CPU)", () => {
  let fp32: StableDiffusionPipeline, bf16: StableDiffusionPipeline;
  beforeAll(async () => {
    fp32 = await loadPipeline(builtin, { device: "cpu" });
    bf16 = await loadPipeline(builtin, { device: "cpu", vaeDtype: "bfloat16" });
  });
  afterAll(() => {
    fp32.dispose();
    bf16.dispose();
  });

  test("the VAE's weights and decode run in the asked dtype; U-Net and text encoder keep the pipeline's", async () => {
    expect(fp32.vaeDtype).toBe("float32");
    expect(bf16.vaeDtype).toBe("bfloat16");
    expect(new Set(bf16.vae.namedParameters().map(([, t]) => t.dtype))).toEqual(new Set(["bfloat16"]));
    expect(new Set(bf16.unet.namedParameters().map(([, t]) => t.dtype))).toEqual(new Set(["float32"]));
    const opts = { prompt: "a red apple", steps: 4, seed: 3 };
    const [a, b] = [await fp32.generate(opts), await bf16.generate(opts)];
    const pa = a.images[0].data, pb = b.images[0].data;
    let sum = 0, differ = 0;
    for (let i = 0; i < pa.length; i++) {
      const d = Math.abs(pa[i] - pb[i]);
      sum += d;
      differ += d > 0 ? 1 : 0;
    }
    // same latents, decoded in bf16: a few levels off here and there, not another image
    expect(differ).toBeGreaterThan(0);
    expect(sum / pa.length).toBeLessThan(2);
  });

  test("bad values are named RangeErrors", async () => {
    await expect(loadPipeline(builtin, { device: "cpu", vaeDtype: "float16" })).rejects.toThrow(/vaeDtype "float16" is not supported on the CPU/);
    await expect(loadPipeline(builtin, { device: "cpu", vaeDtype: "fp8" as never })).rejects.toThrow(/vaeDtype must be one of "auto", "float32", "float16", "bfloat16", got "fp8"/);
  });
});

test("the one-call API keeps one pipeline per vaeDtype", async () => {
  try {
    const auto = await getPipeline({ device: "cpu" });
    const b = await getPipeline({ device: "cpu", vaeDtype: "bfloat16" });
    expect(b).not.toBe(auto);
    expect(b.vaeDtype).toBe("bfloat16");
    expect(await getPipeline({ device: "cpu", vaeDtype: "bfloat16" })).toBe(b);
    expect(await getPipeline({ device: "cpu", vaeDtype: "auto" })).toBe(auto);
  } finally {
    await releasePipelines();
  }
});
