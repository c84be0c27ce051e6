// The pipeline vs diffusers 0.27.2 on tiny-sd: every case of cases/pipeline.safetensors
// (DDIM / Euler / DDPM with saved noise / PNDM, CFG on and off, negative prompt, batch 2 at
// 128x160, img2img at strength 0.6): prompt embeddings, the latents after every step, the final
// latents, the VAE output, the float image and the 8-bit image, within the README's tolerances.
import * as fs from "fs";
import { Tensor } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { imageToNchw } from "../../lib/pipelines/images";
import { encodeInitLatents, img2imgTimesteps } from "../../lib/pipelines/image-to-image";
import { createScheduler, schedulerFromConfig } from "../../lib/schedulers";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, ReplayNoise, absError, readI64, readU8, relError, splitDraws, uint8Diff } from "./pipeline-helpers";

interface Case {
  name: string;
  prompt: string | string[];
  negative_prompt: string | string[];
  guidance_scale: number;
  steps: number;
  height: number;
  width: number;
  scheduler: string;
  strength?: number;
  img2img?: boolean;
  timesteps: number[];
}

const SAMPLER: Record<string, string> = {
  DDIMScheduler: "ddim", EulerDiscreteScheduler: "euler", DDPMScheduler: "ddpm", PNDMScheduler: "default",
};
const TOL = 1e-4;

describeIfReference("pipeline vs diffusers (tiny-sd, cases/pipeline.safetensors)", () => {
  const log = new ErrorLog();
  const perCase = new ErrorLog();
  let pipe: StableDiffusionPipeline;
  let file: SafetensorsFile;
  const manifest = () => JSON.parse(fs.readFileSync(referencePath("cases", "pipeline_manifest.json"), "utf8")) as { cases: Case[] };
  const cases = manifest().cases;

  beforeAll(async () => {
    pipe = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu" });
    file = SafetensorsFile.open(referencePath("cases", "pipeline.safetensors"));
  });
  afterAll(() => {
    pipe?.dispose();
    file?.close();
    process.stderr.write(log.report("pipeline vs diffusers: worst max|ours-ref|/max(1,max|ref|) (image_float: absolute; uint8: fraction of values off by 1)") + "\n");
    process.stderr.write(perCase.report("per case: worst over embeddings, step/final latents and decoded (relative); uint8 fraction off by 1") + "\n");
  });

  const check = (what: string, where: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) => {
    const err = log.record(what, relError(got, want, `${where} ${what}`), where);
    perCase.record(`${where.split(" ")[0]} rel`, err, what);
    expect([where, what, err <= tol ? "ok" : err]).toEqual([where, what, "ok"]);
  };

  /** Embeddings, final latents, decode of the reference final latents, and our 8-bit images. */
  async function checkOutputs(c: Case, images: { data: Uint8Array }[], steps: Float32Array[]) {
    const p = c.name;
    const prompts = typeof c.prompt === "string" ? [c.prompt] : c.prompt;
    const embeds = await pipe.encodePrompt(prompts);
    try {
      check("prompt_embeds", p, await embeds.toFloat32Array(), file.readFloat32(`${p}.prompt_embeds`));
    } finally {
      embeds.dispose();
    }
    if (c.guidance_scale > 1) {
      const negs = typeof c.negative_prompt === "string" ? [c.negative_prompt] : c.negative_prompt;
      const neg = await pipe.encodePrompt(negs);
      try {
        check("negative_prompt_embeds", p, await neg.toFloat32Array(), file.readFloat32(`${p}.negative_prompt_embeds`));
      } finally {
        neg.dispose();
      }
    }
    const refSteps = splitDraws(file, `${p}.step_latents`);
    expect(steps.length).toBe(refSteps.length);
    // README: each step's latents within 1e-4·max(1, max|ref|)
    steps.forEach((s, i) => check("step_latents", `${p} step ${i}`, s, refSteps[i]));
    check("final_latents", p, steps[steps.length - 1], file.readFloat32(`${p}.final_latents`));

    // decode stage on the reference final latents
    const shape = file.info(`${p}.final_latents`).shape;
    const z = Tensor.fromArray(file.readFloat32(`${p}.final_latents`), shape);
    try {
      const d = await pipe.decodeLatents(z);
      check("decoded", p, d.decoded, file.readFloat32(`${p}.decoded`));
      const errF = log.record("image_float (abs)", absError(d.imageFloat, file.readFloat32(`${p}.image_float_nhwc`), p), p);
      expect([p, errF <= TOL]).toEqual([p, true]);
    } finally {
      z.dispose();
    }

    // the images generate() returned vs image_uint8: ±1 on at most 0.1 % of values
    const want = readU8(file, `${p}.image_uint8_nhwc`);
    const got = new Uint8Array(want.length);
    let at = 0;
    for (const img of images) { got.set(img.data, at); at += img.data.length; }
    expect(at).toBe(want.length);
    const u = uint8Diff(got, want);
    log.record("image_uint8 (frac)", u.fraction, p);
    perCase.record(`${p} uint8`, u.fraction, `max diff ${u.max}`);
    expect([p, u.max <= 1, u.fraction <= 1e-3]).toEqual([p, true, true]);
  }

  const txt2img = () => cases.filter((c) => !c.img2img);
  test.each(txt2img().map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const p = c.name;
    const saved = file.has(`${p}.scheduler_noise`) ? new ReplayNoise(splitDraws(file, `${p}.scheduler_noise`)) : undefined;
    const steps: Float32Array[] = [];
    const timesteps: number[] = [];
    const r = await pipe.generate({
      prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, cfg: c.guidance_scale, sampler: SAMPLER[c.scheduler],
      width: c.width, height: c.height, latents: file.readFloat32(`${p}.latents_init`), generator: saved,
      onStep: async ({ latents, timestep }) => {
        steps.push(await latents.toFloat32Array());
        timesteps.push(timestep);
      },
    });
    expect(timesteps).toEqual(c.timesteps);
    if (saved) expect(saved.used).toBe(file.info(`${p}.scheduler_noise`).shape[0]);
    expect(r.images.map((i) => [i.width, i.height])).toEqual(r.images.map(() => [c.width, c.height]));
    await checkOutputs(c, r.images, steps);
  });

  test("img2img_ddim_strength0.6 (StableDiffusionImg2ImgPipeline, saved VAE-sample and add_noise draws)", async () => {
    const c = cases.find((x) => x.img2img)!;
    const p = c.name;
    const image = { width: c.width, height: c.height, data: readU8(file, `${p}.init_image_uint8_hwc`) };

    // the pieces of prepare_latents
    check("init_image_preprocessed", p, imageToNchw(image), file.readFloat32(`${p}.init_image_preprocessed`), 1e-6);
    const sched = createScheduler("ddim", pipe.scheduler);
    sched.setTimesteps(c.steps);
    const tail = img2imgTimesteps(sched.timesteps, c.steps, c.strength!, sched.order);
    expect(tail.timesteps).toEqual(readI64(file, `${p}.timesteps_used`));
    expect(tail.timesteps[0]).toBe(readI64(file, `${p}.latent_timestep`)[0]);
    const init = await encodeInitLatents(pipe, image, 1, new ReplayNoise(splitDraws(file, `${p}.vae_sample_noise`)));
    try {
      check("init_latents", p, await init.toFloat32Array(), file.readFloat32(`${p}.init_latents`));
    } finally {
      init.dispose();
    }

    // the whole pipeline, with the two saved draws in diffusers' order
    const saved = new ReplayNoise([file.readFloat32(`${p}.vae_sample_noise`), file.readFloat32(`${p}.img2img_noise`)]);
    const steps: Float32Array[] = [];
    const timesteps: number[] = [];
    const r = await pipe.img2img({
      image, strength: c.strength, prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, cfg: c.guidance_scale,
      sampler: "ddim", generator: saved,
      onStep: async ({ latents, timestep, step, total }) => {
        expect(total).toBe(6);
        expect(step).toBe(steps.length + 1);
        steps.push(await latents.toFloat32Array());
        timesteps.push(timestep);
      },
    });
    expect(saved.used).toBe(2);
    expect(timesteps).toEqual(readI64(file, `${p}.timesteps_used`));
    await checkOutputs(c, r.images, steps);
    expect(r.images[0].parametersText).toContain("Denoising strength: 0.6");
  });

  test("sampler \"default\" is the folder's PNDM scheduler and \"pndm\" builds the same one", () => {
    expect(pipe.defaultSchedulerClass).toBe("PNDMScheduler");
    const a = schedulerFromConfig("PNDMScheduler", pipe.scheduler), b = createScheduler("pndm", pipe.scheduler);
    a.setTimesteps(5);
    b.setTimesteps(5);
    expect(a.timesteps).toEqual(b.timesteps);
  });
});
