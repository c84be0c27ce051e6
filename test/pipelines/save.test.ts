// pipe.save / savePipeline: a pipeline written as a diffusers folder or a single file loads back
// and generates the same pixels (built-in model, tiny-sd, tiny-sdxl); fp16 and variants; merged
// LoRAs and textual-inversion words travel; bad targets are refused before anything is written.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { loadPipeline, type StableDiffusionPipeline } from "../../lib/pipelines";
import { SafetensorsFile, writeSafetensors } from "../../lib/io/safetensors";
import { openWeightsFile } from "../../lib/io/model-folder";
import { describeIfReference, referencePath } from "../helpers/reference";
import { randn, toF32 } from "../helpers/naive";

const builtin = path.join(__dirname, "..", "..", "models", "builtin");
const hasBuiltin = fs.existsSync(path.join(builtin, "model_index.json"));
const describeIfBuiltin = hasBuiltin ? describe : describe.skip;

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-save-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function pixels(pipe: StableDiffusionPipeline, prompt = "a red apple", size = 64): Promise<Buffer> {
  const r = await pipe.generate({ prompt, steps: 3, seed: 7, width: size, height: size });
  expect(r.images[0].data.length).toBe(size * size * 3);
  return Buffer.from(r.images[0].data);
}

/** Every tensor of a safetensors file as float32, by key. */
function tensors(file: string): Map<string, Float32Array> {
  const f = SafetensorsFile.open(file);
  try {
    return new Map(f.keys().map((k) => [k, f.readFloat32(k)]));
  } finally {
    f.close();
  }
}

function dtypesOf(file: string): Set<string> {
  const s = openWeightsFile(file);
  try {
    return new Set(s.keys().map((k) => s.diskDType(k)));
  } finally {
    s.close();
  }
}

describeIfBuiltin("save (built-in model)", () => {
  let pipe: StableDiffusionPipeline;
  let before: Buffer;
  beforeAll(async () => {
    pipe = await loadPipeline(builtin, { device: "cpu" });
    before = await pixels(pipe);
  });
  afterAll(() => pipe?.dispose());

  test("a diffusers folder: the layout save_pretrained writes, float32 by default, the same pixels when loaded", async () => {
    const dir = path.join(tmp, "folder");
    expect(await pipe.save(dir)).toBe(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]);
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model_index.json"), "utf8"));
    expect(index._class_name).toBe("StableDiffusionPipeline");
    expect(index.scheduler).toEqual(["diffusers", pipe.scheduler["_class_name"]]);
    expect(fs.readdirSync(path.join(dir, "tokenizer")).sort()).toEqual(["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, "unet", "config.json"), "utf8"))._class_name).toBe("UNet2DConditionModel");
    expect(dtypesOf(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"))).toEqual(new Set(["F32"]));
    // the weights are the loaded ones exactly (the built-in model is stored in fp16, so float32 holds them)
    const orig = tensors(path.join(builtin, "unet", "diffusion_pytorch_model.safetensors"));
    const saved = tensors(path.join(dir, "unet", "diffusion_pytorch_model.safetensors"));
    expect([...saved.keys()].sort()).toEqual([...orig.keys()].sort());
    const same = [...orig].filter(([k, v]) => Buffer.from(v.buffer).equals(Buffer.from(saved.get(k)!.buffer)));
    expect(same.length).toBe(orig.size);
    const back = await loadPipeline(dir, { device: "cpu" });
    try {
      expect((await pixels(back)).equals(before)).toBe(true);
      // the tokenizer round-trips: same ids for a prompt with punctuation and unknown words
      const text = "A photo of a cat-astronaut, 4k!! zxqv";
      expect(back.tokenizer.encode(text)).toEqual(pipe.tokenizer.encode(text));
    } finally {
      back.dispose();
    }
  });

  test("float16 with a variant: <weights>.fp16.safetensors, loaded with variant", async () => {
    const dir = path.join(tmp, "fp16");
    await pipe.save(dir, { dtype: "float16", variant: "fp16" });
    expect(fs.readdirSync(path.join(dir, "unet")).sort()).toEqual(["config.json", "diffusion_pytorch_model.fp16.safetensors"]);
    expect(fs.readdirSync(path.join(dir, "text_encoder")).sort()).toEqual(["config.json", "model.fp16.safetensors"]);
    expect(dtypesOf(path.join(dir, "vae", "diffusion_pytorch_model.fp16.safetensors"))).toEqual(new Set(["F16"]));
    await expect(loadPipeline(dir, { device: "cpu" })).rejects.toThrow(/variant/);
    const back = await loadPipeline(dir, { device: "cpu", variant: "fp16" });
    try {
      expect((await pixels(back)).equals(before)).toBe(true);  // fp16 on disk already: nothing rounded
    } finally {
      back.dispose();
    }
  });

  test("a single file: original key names (transformers or OpenCLIP text encoder), the same pixels when loaded", async () => {
    for (const format of ["transformers", "openclip"] as const) {
      const file = path.join(tmp, `builtin-${format}.safetensors`);
      await pipe.save(file, { dtype: "float16", textEncoderFormat: format });
      const keys = [...tensors(file).keys()];
      expect(keys.some((k) => k.startsWith("model.diffusion_model.input_blocks.0.0."))).toBe(true);
      expect(keys.some((k) => k.startsWith("first_stage_model.decoder."))).toBe(true);
      expect(keys.some((k) => k.startsWith(format === "openclip" ? "cond_stage_model.model.transformer.resblocks." : "cond_stage_model.transformer.text_model."))).toBe(true);
      expect(dtypesOf(file)).toEqual(new Set(["F16"]));
      const back = await loadPipeline(file, { device: "cpu", configs: builtin });
      try {
        expect((await pixels(back)).equals(before)).toBe(true);
      } finally {
        back.dispose();
      }
    }
    // no temporary parts folder is left beside it
    expect(fs.readdirSync(tmp).filter((n) => n.startsWith("."))).toEqual([]);
  });

  test("a merged LoRA is saved in the weights: the saved model alone draws what the pipeline with the LoRA draws", async () => {
    const lora = path.join(tmp, "style.safetensors");
    const param = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    const [out, inDim] = pipe.unet.parameter(param)!.spec.shape;
    const base = `lora_unet_${param.slice(0, -".weight".length).replace(/\./g, "_")}`;
    writeSafetensors(lora, {
      [`${base}.lora_down.weight`]: { dtype: "F32", shape: [2, inDim], data: toF32(randn([2, inDim], 5, 0.5)) },
      [`${base}.lora_up.weight`]: { dtype: "F32", shape: [out, 2], data: toF32(randn([out, 2], 6, 0.5)) },
    });
    pipe.loadLora(lora, { scale: 1 });
    try {
      const withLora = await pixels(pipe);
      expect(withLora.equals(before)).toBe(false);
      const dir = path.join(tmp, "merged");
      await pipe.save(dir);
      const back = await loadPipeline(dir, { device: "cpu" });
      try {
        expect(back.loras).toEqual([]);
        expect((await pixels(back)).equals(withLora)).toBe(true);
      } finally {
        back.dispose();
      }
    } finally {
      pipe.unloadLoras();
    }
    expect((await pixels(pipe)).equals(before)).toBe(true);
  });

  test("textual-inversion words: added_tokens.json, a grown embedding table and vocab_size; a single file refuses them", async () => {
    const fresh = await loadPipeline(builtin, { device: "cpu" });
    try {
      const D = fresh.textEncoder.config.hiddenSize;
      const emb = path.join(tmp, "shiny.safetensors");
      writeSafetensors(emb, { emb_params: { dtype: "F32", shape: [2, D], data: toF32(randn([2, D], 11, 0.5)) } });
      const word = fresh.loadTextualInversion(emb).token;
      const withWord = await pixels(fresh, `a ${word} apple`);
      const dir = path.join(tmp, "with-word");
      await fresh.save(dir);
      const added = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer", "added_tokens.json"), "utf8"));
      const first = fresh.tokenizer.vocabSize - 2;
      expect(added).toEqual({ [word]: first, [`${word}_1`]: first + 1 });
      expect(JSON.parse(fs.readFileSync(path.join(dir, "text_encoder", "config.json"), "utf8")).vocab_size).toBe(first + 2);
      const back = await loadPipeline(dir, { device: "cpu" });
      try {
        expect(back.tokenizer.encode(`a ${word.toUpperCase()} apple`)).toEqual(fresh.tokenizer.encode(`a ${word} apple`));
        expect((await pixels(back, `a ${word} apple`)).equals(withWord)).toBe(true);
      } finally {
        back.dispose();
      }
      await expect(fresh.save(path.join(tmp, "word.safetensors"))).rejects.toThrow(/textual-inversion words.*single file/);
    } finally {
      fresh.dispose();
    }
  });

  test("refused before anything is written: a foreign non-empty folder, a file as folder, bad options", async () => {
    const foreign = path.join(tmp, "photos");
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, "cat.jpg"), "x");
    await expect(pipe.save(foreign)).rejects.toThrow(/non-empty folder that is not a diffusers pipeline/);
    expect(fs.readdirSync(foreign)).toEqual(["cat.jpg"]);
    const file = path.join(tmp, "plain.txt");
    fs.writeFileSync(file, "x");
    await expect(pipe.save(file)).rejects.toThrow(/not a folder/);
    await expect(pipe.save(path.join(tmp, "x"), { dtype: "int8" as never })).rejects.toThrow(/dtype must be one of/);
    await expect(pipe.save(path.join(tmp, "x.safetensors"), { variant: "fp16" })).rejects.toThrow(/variant/);
    await expect(pipe.save(path.join(tmp, "x"), { textEncoderFormat: "openclip" })).rejects.toThrow(/single files/);
    await expect(pipe.save(path.join(tmp, "x"), { variant: "../up" })).rejects.toThrow(/variant must be/);
    await expect(pipe.save(path.join(tmp, "x"), { half: true } as never)).rejects.toThrow(/half/);
    expect(fs.existsSync(path.join(tmp, "x"))).toBe(false);
  });
});

describeIfReference("save (tiny-sd, tiny-sdxl)", () => {
  test.each(["tiny-sd", "tiny-sdxl"])("%s: folder and single file round trips draw the same pixels", async (name) => {
    const dir = referencePath("models", name);
    const pipe = await loadPipeline(dir, { device: "cpu" });
    try {
      const before = await pixels(pipe, "a red apple", name === "tiny-sdxl" ? 64 : 32);
      const folder = path.join(tmp, `${name}-folder`);
      await pipe.save(folder);
      const index = JSON.parse(fs.readFileSync(path.join(folder, "model_index.json"), "utf8"));
      if (name === "tiny-sdxl") {
        expect(index._class_name).toBe("StableDiffusionXLPipeline");
        expect(index.text_encoder_2).toEqual(["transformers", "CLIPTextModelWithProjection"]);
        expect(fs.existsSync(path.join(folder, "tokenizer_2", "vocab.json"))).toBe(true);
      }
      const file = path.join(tmp, `${name}.safetensors`);
      await pipe.save(file);
      if (name === "tiny-sdxl") {
        const keys = [...tensors(file).keys()];
        expect(keys.some((k) => k.startsWith("conditioner.embedders.0.transformer."))).toBe(true);
        expect(keys.some((k) => k.startsWith("conditioner.embedders.1.model."))).toBe(true);
      }
      for (const [target, opts] of [[folder, {}], [file, { configs: dir }]] as const) {
        const back = await loadPipeline(target, { device: "cpu", ...opts });
        try {
          expect((await pixels(back, "a red apple", name === "tiny-sdxl" ? 64 : 32)).equals(before)).toBe(true);
        } finally {
          back.dispose();
        }
      }
    } finally {
      pipe.dispose();
    }
  });

  test("tiny-sd-inpaint saves as an inpainting pipeline", async () => {
    const pipe = await loadPipeline(referencePath("models", "tiny-sd-inpaint"), { device: "cpu" });
    try {
      const folder = path.join(tmp, "inpaint");
      await pipe.save(folder);
      expect(JSON.parse(fs.readFileSync(path.join(folder, "model_index.json"), "utf8"))._class_name).toBe("StableDiffusionInpaintPipeline");
      const back = await loadPipeline(folder, { device: "cpu" });
      try {
        expect(back.isInpaintingModel).toBe(true);
      } finally {
        back.dispose();
      }
    } finally {
      pipe.dispose();
    }
  });
});
