// Inpainting vs diffusers 0.27.2 (cases/inpaint.safetensors, models/tiny-sd-inpaint, a 9-channel
// U-Net): the mask and masked-image tensors, the masked image's VAE posterior sample, the latents
// after every DDIM step, the decode and the 8-bit image, within the reference README's tolerances.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { openWeightsFile } from "../../lib/io/model-folder";
import { inspectSingleFile } from "../../lib/models/single-file";
import { ControlNetModel } from "../../lib/models/controlnet";
import { TensorMapSource } from "../../lib/nn/module";
import { Tensor, memoryStats, synchronize } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { imageToNchw } from "../../lib/pipelines/images";
import { encodePosteriorSamples } from "../../lib/pipelines/image-to-image";
import { latentMask, maskCondition, maskedImage } from "../../lib/pipelines/mask";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, ReplayNoise, absError, readI64, readU8, relError, splitDraws, uint8Diff, writeSingleFile } from "./pipeline-helpers";

const TOL = 1e-4;
const P = "ddim_cfg7.5_strength1";

describeIfReference("inpainting vs diffusers (tiny-sd-inpaint, cases/inpaint.safetensors)", () => {
  const log = new ErrorLog();
  let pipe: StableDiffusionPipeline;
  let file: SafetensorsFile;
  const c = (JSON.parse(fs.readFileSync(referencePath("cases", "inpaint_manifest.json"), "utf8")) as { cases: { name: string; prompt: string; negative_prompt: string; guidance_scale: number; steps: number; width: number; height: number; timesteps: number[] }[] }).cases[0];

  beforeAll(async () => {
    pipe = await loadPipeline(referencePath("models", "tiny-sd-inpaint"), { device: "cpu" });
    file = SafetensorsFile.open(referencePath("cases", "inpaint.safetensors"));
  });
  afterAll(() => {
    pipe?.dispose();
    file?.close();
    process.stderr.write(log.report("inpaint vs diffusers: worst max|ours-ref|/max(1,max|ref|) (image_float: absolute; uint8: fraction off by 1)") + "\n");
  });
  const check = (what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) => {
    const err = log.record(what, relError(got, want, what), P);
    expect([what, err <= tol ? "ok" : err]).toEqual([what, "ok"]);
  };
  const image = () => ({ width: c.width, height: c.height, data: readU8(file, `${P}.init_image_uint8_hwc`) });
  const mask = () => ({ width: c.width, height: c.height, data: readU8(file, `${P}.mask_uint8_hw`) });

  test("the pipeline loads as an inpainting model; generate() and img2img() point to inpaint()", async () => {
    expect(pipe.isInpaintingModel).toBe(true);
    await expect(pipe.generate({ prompt: "x", steps: 1 })).rejects.toThrow(/is an inpainting model .* use inpaint\(\{ image, mask, prompt \}\)/);
    await expect(pipe.img2img({ prompt: "x", steps: 1, image: image() })).rejects.toThrow(/inpainting model/);
  });

  test("mask condition, latent mask and masked image are exact; the masked image's posterior sample within 1e-4", async () => {
    const init = imageToNchw(image());
    check("init_image_preprocessed", init, file.readFloat32(`${P}.init_image_preprocessed`), 1e-6);
    const cond = maskCondition(mask());
    expect(cond).toEqual(file.readFloat32(`${P}.mask_condition`));
    expect(latentMask(cond, 128, 128, 32, 32)).toEqual(file.readFloat32(`${P}.mask_latents`));
    const masked = maskedImage(init, cond);
    check("masked_image", masked, file.readFloat32(`${P}.masked_image`), 1e-6);
    const mil = await encodePosteriorSamples(pipe, masked, 128, 128, [file.readFloat32(`${P}.vae_sample_noise`)]);
    try {
      check("masked_image_latents", await mil.toFloat32Array(), file.readFloat32(`${P}.masked_image_latents`));
    } finally {
      mil.dispose();
    }
  });

  test("ddim_cfg7.5_strength1: every step's latents, the final latents, the decode and the 8-bit image", async () => {
    const noise = new ReplayNoise([file.readFloat32(`${P}.vae_sample_noise`)]);
    const steps: Float32Array[] = [];
    const timesteps: number[] = [];
    const r = await pipe.inpaint({
      image: image(), mask: mask(), prompt: c.prompt, negativePrompt: c.negative_prompt, cfg: c.guidance_scale, steps: c.steps,
      sampler: "ddim", latents: file.readFloat32(`${P}.latents_init`), generator: noise,
      onStep: async ({ latents, timestep }) => {
        steps.push(await latents.toFloat32Array());
        timesteps.push(timestep);
      },
    });
    expect(noise.used).toBe(1);  // the masked image's posterior sample; the start latents were given
    expect(timesteps).toEqual(readI64(file, `${P}.timesteps`));
    const ref = splitDraws(file, `${P}.step_latents`);
    steps.forEach((s, i) => check(`step_latents ${i}`, s, ref[i]));
    check("final_latents", steps[steps.length - 1], file.readFloat32(`${P}.final_latents`));

    const z = Tensor.fromArray(file.readFloat32(`${P}.final_latents`), [1, 4, 32, 32]);
    try {
      const d = await pipe.decodeLatents(z);
      check("decoded", d.decoded, file.readFloat32(`${P}.decoded`));
      const errF = log.record("image_float (abs)", absError(d.imageFloat, file.readFloat32(`${P}.image_float_nhwc`), P), P);
      expect(errF).toBeLessThanOrEqual(TOL);
    } finally {
      z.dispose();
    }
    const u = uint8Diff(r.images[0].data, readU8(file, `${P}.image_uint8_nhwc`));
    log.record("image_uint8 (frac)", u.fraction, P);
    expect([u.max <= 1, u.fraction <= 1e-3]).toEqual([true, true]);
    expect(r.images[0].parametersText).not.toContain("Denoising strength");  // strength 1 is the default
  });

  test("strength 0.6 on the 9-channel U-Net: image posterior, start noise, masked-image posterior; 3 of 5 steps", async () => {
    const draws = [0, 1, 2].map((k) => file.readFloat32(`${P}.vae_sample_noise`).map((v) => v * (k + 1)));
    const noise = new ReplayNoise(draws);
    const seen: number[] = [];
    await pipe.inpaint({ image: image(), mask: mask(), prompt: c.prompt, steps: 5, sampler: "ddim", strength: 0.6, generator: noise, onStep: ({ timestep }) => { seen.push(timestep); } });
    expect(noise.used).toBe(3);
    expect(seen).toEqual(c.timesteps.slice(2));
  });

  test("a single-file inpainting checkpoint loads as one (9 input channels from its conv_in) and inpaints as the folder does", async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-inpaint-single-"));
    try {
      const single = path.join(tmp, "tiny-sd-inpaint.safetensors");
      writeSingleFile(referencePath("models", "tiny-sd-inpaint"), single);
      expect(inspectSingleFile(openWeightsFile(single)).unetInChannels).toBe(9);
      // tiny-sd's configs say in_channels 4; the checkpoint's conv_in decides
      const p = await loadPipeline(single, { device: "cpu", configs: referencePath("models", "tiny-sd") });
      try {
        expect(p.isInpaintingModel).toBe(true);
        const opts = { image: image(), mask: mask(), prompt: c.prompt, steps: 2, sampler: "ddim", seed: 3 };
        expect((await p.inpaint(opts)).images[0].data).toEqual((await pipe.inpaint(opts)).images[0].data);
      } finally {
        p.dispose();
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  test("a ControlNet with the inpainting U-Net reads the 4 latent channels alone; zero convs change nothing", async () => {
    const net = new ControlNetModel({ ...(pipe.unet.configJson as Record<string, unknown>), in_channels: 4, conditioning_embedding_out_channels: [16, 32, 96] });
    const sd = pipe.unet.stateDict();
    const map = new Map(net.namedParameterSpecs().map(([n, spec]) => {
      const own = sd.get(n);
      return [n, own && own.shape.join() === spec.shape.join() ? own : Tensor.zeros(spec.shape)] as [string, Tensor];
    }));
    net.loadStateDict(new TensorMapSource(map));
    for (const t of new Set([...map.values(), ...sd.values()])) t.dispose();
    try {
      const opts = { image: image(), mask: mask(), prompt: c.prompt, steps: 2, sampler: "ddim", seed: 3 };
      const plain = (await pipe.inpaint(opts)).images[0].data;
      expect((await pipe.inpaint({ ...opts, controlnet: { model: net, image: image() } })).images[0].data).toEqual(plain);
    } finally {
      net.dispose();
    }
  });

  test("no tensor outlives a call, also when it fails", async () => {
    const before = memoryStats("cpu").bytesInUse;
    await pipe.inpaint({ image: image(), mask: mask(), prompt: c.prompt, steps: 2, sampler: "ddim", seed: 1 });
    await expect(pipe.inpaint({ image: image(), mask: mask(), prompt: c.prompt, steps: 2, onStep: () => { throw new Error("stop"); } })).rejects.toThrow("stop");
    await synchronize("cpu");
    expect(memoryStats("cpu").bytesInUse).toBeLessThanOrEqual(before);
  });
});
