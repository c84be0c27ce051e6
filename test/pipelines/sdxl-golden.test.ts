// SDXL vs diffusers 0.27.2 on tiny-sdxl (cases/sdxl.safetensors): encode_prompt for every case
// (two tokenizers, penultimate hidden states side by side, pooled projection, zeroed or encoded
// negatives), the U-Net conditioning rows the pipeline builds (embeddings, pooled, size ids), and
// both pipeline cases step by step to the 8-bit image, within the reference README's tolerances.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { ModelFolder, openWeightsFile } from "../../lib/io/model-folder";
import { readAllFloat32 } from "../../lib/io/state-dict";
import { convertDiffusersToSingleFile } from "../../lib/models/single-file";
import { renameLegacyVaeKey } from "../../lib/models/autoencoder-kl";
import { ControlNetModel } from "../../lib/models/controlnet";
import { TensorMapSource } from "../../lib/nn/module";
import { Tensor } from "../../lib";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { loadPipeline, StableDiffusionPipeline } from "../../lib/pipelines";
import { GENERATE_KEYS, disposeConditioning, encodeConditioning, resolveCommon } from "../../lib/pipelines/text-to-image";
import { describeIfReference, referencePath } from "../helpers/reference";
import { ErrorLog, ReplayNoise, absError, readI64, readU8, relError, splitDraws, uint8Diff } from "./pipeline-helpers";

const TOL = 1e-4;

interface EncCase { case: string; prompt: string | string[]; prompt_2?: string; negative_prompt: string | null; negative_prompt_2?: string; force_zeros: boolean; negative_zeroed: boolean }
interface PipeCase {
  name: string; prompt: string; negative_prompt: string | null; guidance_scale: number; steps: number; height: number; width: number;
  scheduler: string; original_size?: [number, number]; crops_coords_top_left?: [number, number]; add_time_ids: number[]; timesteps: number[];
}

describeIfReference("SDXL vs diffusers (tiny-sdxl, cases/sdxl.safetensors)", () => {
  const log = new ErrorLog();
  let pipe: StableDiffusionPipeline;
  let file: SafetensorsFile;
  const manifest = JSON.parse(fs.readFileSync(referencePath("cases", "sdxl_manifest.json"), "utf8")) as { encode_prompt: EncCase[]; pipeline: PipeCase[] };

  beforeAll(async () => {
    pipe = await loadPipeline(referencePath("models", "tiny-sdxl"), { device: "cpu" });
    file = SafetensorsFile.open(referencePath("cases", "sdxl.safetensors"));
  });
  afterAll(() => {
    pipe?.dispose();
    file?.close();
    process.stderr.write(log.report("SDXL vs diffusers: worst max|ours-ref|/max(1,max|ref|) (image_float: absolute; uint8: fraction off by 1)") + "\n");
  });
  const check = (what: string, where: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) => {
    const err = log.record(what, relError(got, want, `${where} ${what}`), where);
    expect([where, what, err <= tol ? "ok" : err]).toEqual([where, what, "ok"]);
  };

  test("the folder loads as SDXL: two tokenizers (the second pads with '!'), a projecting second encoder, zeros for empty negatives", () => {
    expect(pipe.isXL).toBe(true);
    expect(pipe.forceZerosForEmptyPrompt).toBe(true);
    expect(pipe.tokenizer2!.encodePadded("a cat wearing a hat").slice(0, 9)).toEqual([49406, 320, 2368, 3309, 320, 3801, 49407, 0, 0]);
    expect(pipe.defaultSize).toEqual({ width: 128, height: 128 });
  });

  for (const c of manifest.encode_prompt) {
    test(`${c.case}: token ids, prompt embeddings, pooled, and the negative side (${c.negative_zeroed ? "zeros" : "encoded"})`, async () => {
      const p = c.case;
      const prompts = typeof c.prompt === "string" ? [c.prompt] : c.prompt;
      expect(prompts.flatMap((t) => pipe.tokenizer.encodePadded(t))).toEqual(readI64(file, `${p}.input_ids`));
      expect(prompts.flatMap((t) => pipe.tokenizer2!.encodePadded(c.prompt_2 ?? t))).toEqual(readI64(file, `${p}.input_ids_2`));
      const { embeds, pooled } = await pipe.encodePromptXL(prompts, { prompt2: c.prompt_2 });
      try {
        check("prompt_embeds", p, await embeds.toFloat32Array(), file.readFloat32(`${p}.prompt_embeds`));
        check("pooled_prompt_embeds", p, await pooled.toFloat32Array(), file.readFloat32(`${p}.pooled_prompt_embeds`));
      } finally {
        embeds.dispose();
        pooled.dispose();
      }
      // what the pipeline hands the U-Net: [negative rows; prompt rows]
      const model = c.force_zeros === pipe.forceZerosForEmptyPrompt ? pipe
        : new StableDiffusionPipeline({ ...components(pipe), forceZerosForEmptyPrompt: c.force_zeros });
      const run = resolveCommon(model, {
        prompt: prompts, cfg: 5,
        ...(c.negative_prompt === null ? {} : { negativePrompt: c.negative_prompt }),
        ...(c.prompt_2 === undefined ? {} : { prompt2: c.prompt_2 }),
        ...(c.negative_prompt_2 === undefined ? {} : { negativePrompt2: c.negative_prompt_2 }),
      }, "generate", GENERATE_KEYS);
      const cond = encodeConditioning(model, run, 128, 128);
      try {
        const rows = prompts.length;
        const ctx = await cond.context.toFloat32Array(), te = await cond.added!.textEmbeds.toFloat32Array();
        const half = ctx.length / 2, halfT = te.length / 2;
        expect(cond.context.shape).toEqual([2 * rows, 77, 40]);
        check("negative_prompt_embeds", p, ctx.subarray(0, half), file.readFloat32(`${p}.negative_prompt_embeds`));
        check("negative_pooled_prompt_embeds", p, te.subarray(0, halfT), file.readFloat32(`${p}.negative_pooled_prompt_embeds`));
        if (c.negative_zeroed) expect(ctx.subarray(0, half).every((v) => v === 0) && te.subarray(0, halfT).every((v) => v === 0)).toBe(true);
        check("prompt_embeds (rows)", p, ctx.subarray(half), file.readFloat32(`${p}.prompt_embeds`));
        expect(Array.from(await cond.added!.timeIds.toFloat32Array())).toEqual(Array(2 * rows).fill([128, 128, 0, 0, 128, 128]).flat());
      } finally {
        disposeConditioning(cond);
        run.scheduler.dispose();
      }
    });
  }

  for (const c of manifest.pipeline) {
    test(`${c.name}: every step's latents, the final latents, the decode and the 8-bit image`, async () => {
      const p = c.name;
      const saved = file.has(`${p}.scheduler_noise`) ? new ReplayNoise(splitDraws(file, `${p}.scheduler_noise`)) : undefined;
      const steps: Float32Array[] = [];
      const timesteps: number[] = [];
      const r = await pipe.generate({
        prompt: c.prompt, ...(c.negative_prompt === null ? {} : { negativePrompt: c.negative_prompt }), cfg: c.guidance_scale, steps: c.steps,
        sampler: c.scheduler === "DDIMScheduler" ? "ddim" : "euler", width: c.width, height: c.height,
        latents: file.readFloat32(`${p}.latents_init`), generator: saved,
        ...(c.original_size ? { originalSize: { height: c.original_size[0], width: c.original_size[1] } } : {}),
        ...(c.crops_coords_top_left ? { cropTopLeft: { top: c.crops_coords_top_left[0], left: c.crops_coords_top_left[1] } } : {}),
        onStep: async ({ latents, timestep }) => {
          steps.push(await latents.toFloat32Array());
          timesteps.push(timestep);
        },
      });
      expect(timesteps).toEqual(c.timesteps);
      const ref = splitDraws(file, `${p}.step_latents`);
      steps.forEach((s, i) => check("step_latents", `${p} step ${i}`, s, ref[i]));
      check("final_latents", p, steps[steps.length - 1], file.readFloat32(`${p}.final_latents`));
      const shape = file.info(`${p}.final_latents`).shape;
      const z = Tensor.fromArray(file.readFloat32(`${p}.final_latents`), shape);
      try {
        const d = await pipe.decodeLatents(z);
        check("decoded", p, d.decoded, file.readFloat32(`${p}.decoded`));
        expect(log.record("image_float (abs)", absError(d.imageFloat, file.readFloat32(`${p}.image_float_nhwc`), p), p)).toBeLessThanOrEqual(TOL);
      } finally {
        z.dispose();
      }
      const u = uint8Diff(r.images[0].data, readU8(file, `${p}.image_uint8_nhwc`));
      log.record("image_uint8 (frac)", u.fraction, p);
      expect([u.max <= 1, u.fraction <= 1e-3]).toEqual([true, true]);
    });
  }

  test("img2img and inpaint run on SDXL; CFG off and several images per prompt make one row each", async () => {
    const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 37) % 256) };
    const mask = { width: 64, height: 64, data: new Uint8Array(64 * 64).map((_, i) => (i % 64 < 32 ? 0 : 255)) };
    const a = await pipe.img2img({ image, prompt: "a cat", steps: 2, strength: 0.5, seed: 1 });
    const b = await pipe.inpaint({ image, mask, prompt: "a cat", steps: 2, seed: 1, keepUnmasked: true });
    const hires = await pipe.generate({ prompt: "a cat", steps: 2, seed: 1, width: 64, height: 64, hires: { scale: 2, steps: 2 } });
    expect([hires.images[0].width, hires.images[0].height]).toEqual([128, 128]);  // the second pass's size ids are re-made for 128x128
    let calls = 0;
    await pipe.img2img({ image, prompt: "a cat", steps: 10, seed: 1, onStep: () => { calls++; } });
    expect(calls).toBe(3);  // SDXL img2img's default strength is 0.3 (diffusers'), not SD's 0.8
    expect([a.images[0].width, b.images[0].width]).toEqual([64, 64]);
    const run = resolveCommon(pipe, { prompt: ["a", "b"], numImages: 2, cfg: 1, cropTopLeft: { top: 8, left: 4 } }, "generate", GENERATE_KEYS);
    const cond = encodeConditioning(pipe, run, 64, 96);
    try {
      expect([cond.context.shape, cond.added!.textEmbeds.shape, cond.added!.timeIds.shape]).toEqual([[4, 77, 40], [4, 32], [4, 6]]);
      expect(Array.from((await cond.added!.timeIds.toFloat32Array()).slice(0, 6))).toEqual([96, 64, 8, 4, 96, 64]);
    } finally {
      disposeConditioning(cond);
      run.scheduler.dispose();
    }
  });

  test("LoRA on SDXL: kohya lora_te1_/lora_te2_ and PEFT text_encoder_2 keys reach the second encoder; undo is exact", async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-sdxl-lora-"));
    try {
      const t = (shape: number[], v: number) => ({ dtype: "F32" as const, shape, data: new Float32Array(shape.reduce((x, y) => x * y, 1)).fill(v) });
      const te2q = "text_model.encoder.layers.1.self_attn.q_proj";
      const before = await pipe.textEncoder2!.parameter(`${te2q}.weight`)!.tensor.toFloat32Array();
      for (const [name, rec] of [
        ["kohya", { "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": t([2, 16], 0.1), "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": t([16, 2], 0.1),
          "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight": t([2, 24], 0.1), "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight": t([24, 2], 0.1),
          "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_down.weight": t([2, 40], 0.1), "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_up.weight": t([32, 2], 0.1) }],
        ["peft", { [`text_encoder_2.${te2q}.lora_A.weight`]: t([2, 24], 0.1), [`text_encoder_2.${te2q}.lora_B.weight`]: t([24, 2], 0.1) }],
      ] as const) {
        const f = path.join(tmp, `${name}.safetensors`);
        writeSafetensors(f, rec);
        const info = pipe.loadLora(f);
        expect(info.layers).toEqual(name === "kohya" ? { unet: 1, textEncoder: 1, textEncoder2: 1 } : { unet: 0, textEncoder: 0, textEncoder2: 1 });
        const w = await pipe.textEncoder2!.parameter(`${te2q}.weight`)!.tensor.toFloat32Array();
        expect(w[0]).toBeCloseTo(before[0] + 2 * 0.1 * 0.1, 6);  // rank 2, alpha = rank
        pipe.unloadLoras();
        expect(await pipe.textEncoder2!.parameter(`${te2q}.weight`)!.tensor.toFloat32Array()).toEqual(before);
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  test("an SDXL single-file checkpoint (conditioner.embedders.0/1) loads and generates as the folder does", async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-sdxl-single-"));
    try {
      const dir = referencePath("models", "tiny-sdxl");
      const f = ModelFolder.open(dir);
      const srcs: { close(): void }[] = [];
      const open = (n: string, mapKey?: (k: string) => string | null) => { const x = openWeightsFile(f.weightsLocation(n).file, { mapKey }); srcs.push(x); return x; };
      const noIds = (k: string) => (k.endsWith("position_ids") ? null : k);
      const main = convertDiffusersToSingleFile({ unet: open("unet"), vae: open("vae", renameLegacyVaeKey), textEncoder: open("text_encoder", noIds) },
        { unet: f.config("unet"), vae: f.config("vae"), textEncoder: f.config("text_encoder") });
      const second = convertDiffusersToSingleFile({ textEncoder: open("text_encoder_2", noIds) }, { textEncoder: f.config("text_encoder_2") }, { textEncoderFormat: "openclip" });
      const rec: Record<string, SafetensorsTensorInput> = {};
      const put = (sd: typeof main, from: string, to: string) => {
        for (const [k, t] of readAllFloat32(sd)) rec[k.startsWith(from) ? to + k.slice(from.length) : k] = { dtype: "F32", shape: [...t.shape], data: t.data };
      };
      put(main, "cond_stage_model.transformer.", "conditioner.embedders.0.transformer.");
      put(second, "cond_stage_model.model.", "conditioner.embedders.1.model.");
      for (const x of srcs) x.close();
      const file = path.join(tmp, "tiny-sdxl.safetensors");
      writeSafetensors(file, rec);
      const single = await loadPipeline(file, { device: "cpu", configs: dir });
      try {
        expect([single.isXL, single.modelName]).toEqual([true, "tiny-sdxl"]);
        const opts = { prompt: "a cat wearing a hat", negativePrompt: "ugly", steps: 2, seed: 5 };
        expect((await single.generate(opts)).images[0].data).toEqual((await pipe.generate(opts)).images[0].data);
      } finally {
        single.dispose();
      }
      // without a tokenizer_2 folder the second tokenizer is the first's vocabulary padded with "!"
      const only = await loadPipeline(file, { device: "cpu", configs: dir, tokenizer: path.join(dir, "tokenizer") });
      try {
        expect(only.tokenizer2!.encodePadded("a cat").slice(0, 5)).toEqual(pipe.tokenizer2!.encodePadded("a cat").slice(0, 5));
      } finally {
        only.dispose();
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  test("a ControlNet over the SDXL U-Net gets the added conditioning; zero convs change nothing", async () => {
    const net = new ControlNetModel({ ...(pipe.unet.configJson as Record<string, unknown>) });
    const sd = pipe.unet.stateDict();
    const map = new Map(net.namedParameterSpecs().map(([n, spec]) => [n, sd.get(n) ?? Tensor.zeros(spec.shape)] as [string, Tensor]));
    net.loadStateDict(new TensorMapSource(map));
    for (const t of new Set([...map.values(), ...sd.values()])) t.dispose();
    try {
      const image = { width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(200) };
      const opts = { prompt: "a cat", steps: 2, seed: 3, width: 64, height: 64 };
      expect((await pipe.generate({ ...opts, controlnet: { model: net, image } })).images[0].data).toEqual((await pipe.generate(opts)).images[0].data);
    } finally {
      net.dispose();
    }
  });

  test("SDXL-only options are refused on an SD model", async () => {
    const sd = await loadPipeline(referencePath("models", "tiny-sd"), { device: "cpu" });
    try {
      await expect(sd.generate({ prompt: "x", steps: 1, prompt2: "y", originalSize: { width: 8, height: 8 } })).rejects.toThrow(/prompt2, originalSize are for SDXL models/);
      await expect(sd.encodePromptXL("x")).rejects.toThrow(/not an SDXL model/);
    } finally {
      sd.dispose();
    }
  });

  test("bad SDXL options are named", async () => {
    await expect(pipe.generate({ prompt: "x", steps: 1, cropTopLeft: { top: -1, left: 0 } })).rejects.toThrow(/cropTopLeft must be \{ top, left \}/);
    await expect(pipe.generate({ prompt: "x", steps: 1, targetSize: { width: 0, height: 8 } })).rejects.toThrow(/targetSize must be \{ width, height \}/);
    await expect(pipe.generate({ prompt: ["a", "b"], steps: 1, prompt2: ["c", "d", "e"] })).rejects.toThrow(/prompt2 has 3 entries but prompt has 2/);
  });
});

function components(p: StableDiffusionPipeline) {
  const { tokenizer, textEncoder, unet, vae, scheduler, device, dtype, vaeDtype, modelName } = p;
  return { tokenizer, textEncoder, unet, vae, scheduler, device, dtype, vaeDtype, modelName, tokenizer2: p.tokenizer2!, textEncoder2: p.textEncoder2! };
}
