/**
 * diffusers model folders and state-dict sources: model_index.json, per-component configs,
 * weight lookup (variants, shards), dtype conversion on load, key renaming, pickle refusal and
 * the errors for missing pieces.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor } from "../../lib/tensor";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { float32ToBfloat16, float32ToFloat16, bfloat16ToFloat32, float16ToFloat32 } from "../../lib/io/half";
import { ModelFolder, findWeights, openWeightsFile, parseModelIndex } from "../../lib/io/model-folder";
import { LazyStateDict, SafetensorsStateDict, filterStateDict, prefixStateDict, readAllFloat32, renameStateDict } from "../../lib/io/state-dict";
import { describeIfReference, referencePath } from "../helpers/reference";

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-folder-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function dir(...parts: string[]): string {
  const d = path.join(tmp, ...parts);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

const A = Float32Array.from({ length: 12 }, (_, i) => (i - 5.5) * 0.3337);
const B = Float32Array.from([1.0009765625, -2.5, 3.14159, 65504, 1e-3, -7e-8]);

function f32(shape: number[], data: Float32Array): SafetensorsTensorInput {
  return { dtype: "F32", shape, data };
}

describeIfReference("ModelFolder on tiny-sd", () => {
  let folder: ModelFolder;
  beforeAll(() => { folder = ModelFolder.open(referencePath("models/tiny-sd")); });

  test("model_index.json: class, components, absent entries, options", () => {
    expect(folder.index.className).toBe("StableDiffusionPipeline");
    expect(folder.index.diffusersVersion).toBe("0.27.2");
    expect([...folder.index.components.keys()].sort()).toEqual(["scheduler", "text_encoder", "tokenizer", "unet", "vae"]);
    expect(folder.component("unet")).toEqual({ name: "unet", library: "diffusers", className: "UNet2DConditionModel" });
    expect(folder.index.absent.sort()).toEqual(["feature_extractor", "image_encoder", "safety_checker"]);
    expect(folder.index.options).toEqual({ requires_safety_checker: false });
  });

  test("configs per component kind", () => {
    expect(folder.config("unet")["_class_name"]).toBe("UNet2DConditionModel");
    expect(folder.config("text_encoder")["hidden_size"]).toBe(32);
    expect(folder.configPath("scheduler")).toMatch(/scheduler[/\\]scheduler_config\.json$/);
    expect(folder.config("scheduler")["_class_name"]).toBe("PNDMScheduler");
    expect(folder.configPath("tokenizer")).toMatch(/tokenizer_config\.json$/);
  });

  test("weights: diffusers and transformers names", () => {
    expect(path.basename(folder.weightsLocation("unet").file)).toBe("diffusion_pytorch_model.safetensors");
    expect(path.basename(folder.weightsLocation("text_encoder").file)).toBe("model.safetensors");
    const w = folder.weights("vae");
    try {
      expect(w.keys().length).toBe(200);
      expect(w.shape("decoder.conv_out.weight")).toEqual([3, 32, 3, 3]);
      expect(w.diskDType("decoder.conv_out.weight")).toBe("F32");
    } finally {
      w.close();
    }
  });

  test("errors for components that are absent, unknown or missing on disk", () => {
    expect(() => folder.component("safety_checker")).toThrow(/"safety_checker" is \[null, null\] in model_index\.json/);
    expect(() => folder.config("controlnet")).toThrow(/model_index\.json has no component "controlnet" \(it lists .*unet/);
    expect(() => folder.weights("vae", { variant: "fp16" })).toThrow(/no "fp16" variant weights .*leave out the variant/);
  });
});

describe("ModelFolder errors", () => {
  test("not a folder, no model_index.json, bad JSON, component folder missing", () => {
    expect(() => ModelFolder.open(path.join(tmp, "nope"))).toThrow(/model folder not found/);
    const noIndex = dir("no-index");
    fs.writeFileSync(path.join(noIndex, "readme.txt"), "x");
    expect(() => ModelFolder.open(noIndex)).toThrow(/has no model_index\.json: not a diffusers pipeline folder \(the folder has readme\.txt\)/);
    const bad = dir("bad-index");
    fs.writeFileSync(path.join(bad, "model_index.json"), "{ not json");
    expect(() => ModelFolder.open(bad)).toThrow(/model_index\.json .* is not valid JSON/);
    const lost = dir("lost-unet");
    fs.writeFileSync(path.join(lost, "model_index.json"), JSON.stringify({ _class_name: "StableDiffusionPipeline", unet: ["diffusers", "UNet2DConditionModel"] }));
    const f = ModelFolder.open(lost);
    expect(() => f.config("unet")).toThrow(/component "unet" is listed in model_index\.json but the folder .* is missing/);
    dir("lost-unet", "unet");
    expect(() => f.config("unet")).toThrow(/unet config not found: .*config\.json/);
    expect(() => f.weights("unet")).toThrow(/no weights found \(looked for diffusion_pytorch_model\.safetensors.*the folder has no files\)/);
  });

  test("a single .ckpt path is refused as pickle", () => {
    const file = path.join(dir("ckpt"), "v1-5-pruned.ckpt");
    fs.writeFileSync(file, "PK\x03\x04");
    expect(() => ModelFolder.open(file)).toThrow(/pickle checkpoints .* can execute arbitrary code/);
    expect(() => openWeightsFile(file)).toThrow(/v1-5-pruned\.ckpt: pickle checkpoints/);
  });

  test("a zip or pickle stream renamed to .safetensors is refused as pickle", () => {
    const d = dir("renamed");
    fs.writeFileSync(path.join(d, "a.safetensors"), Buffer.from([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0, 0, 0]));
    fs.writeFileSync(path.join(d, "b.safetensors"), Buffer.from([0x80, 0x02, 0x7d, 0x71, 0, 0, 0, 0, 0, 0]));
    expect(() => openWeightsFile(path.join(d, "a.safetensors"))).toThrow(/pickle checkpoints/);
    expect(() => openWeightsFile(path.join(d, "b.safetensors"))).toThrow(/pickle checkpoints/);
  });

  test("only pickle weights in a component: refused, naming the file and the conversion", () => {
    const d = dir("pickle-only", "unet");
    fs.writeFileSync(path.join(d, "diffusion_pytorch_model.bin"), "x");
    expect(() => findWeights(d)).toThrow(/diffusion_pytorch_model\.bin: pickle checkpoints .*save_pretrained\(out, safe_serialization=True\)/);
  });

  test("parseModelIndex validates entries", () => {
    expect(() => parseModelIndex({})).toThrow(/_class_name/);
    expect(() => parseModelIndex({ _class_name: "X", unet: ["diffusers"] })).toThrow(/"unet" must be \[library, class\]/);
    expect(() => parseModelIndex({ _class_name: "X", unet: [1, 2] })).toThrow(/strings or \[null, null\]/);
  });
});

describe("weights: variants and on-disk dtypes", () => {
  test("fp16 variant: chosen with { variant: 'fp16' }, converted to float32 or kept as float16", async () => {
    const d = dir("variant", "text_encoder");
    writeSafetensors(path.join(d, "model.safetensors"), { a: f32([3, 4], A) });
    writeSafetensors(path.join(d, "model.fp16.safetensors"), { a: { dtype: "F16", shape: [3, 4], data: float32ToFloat16(A) } });
    expect(path.basename(findWeights(d).file)).toBe("model.safetensors");
    expect(path.basename(findWeights(d, { variant: "fp16" }).file)).toBe("model.fp16.safetensors");
    const w = openWeightsFile(findWeights(d, { variant: "fp16" }).file);
    try {
      expect(w.diskDType("a")).toBe("F16");
      const rounded = float16ToFloat32(float32ToFloat16(A));
      const t32 = w.load("a", { dtype: "float32", device: "cpu" });
      expect(t32.dtype).toBe("float32");
      expect(Array.from(await t32.toFloat32Array())).toEqual(Array.from(rounded));
      t32.dispose();
      const t16 = w.load("a", { dtype: "float16", device: "cpu" });
      expect(t16.dtype).toBe("float16");
      expect(t16.shape).toEqual([3, 4]);
      expect(Array.from(await t16.toFloat32Array())).toEqual(Array.from(rounded));
      t16.dispose();
    } finally {
      w.close();
    }
    expect(() => findWeights(d, { variant: "../x" })).toThrow(/variant must be a plain name/);
  });

  test("only variant files and no variant asked: the error says which variant to pass", () => {
    const d = dir("only-fp16", "unet");
    writeSafetensors(path.join(d, "diffusion_pytorch_model.fp16.safetensors"), { a: { dtype: "F16", shape: [1], data: new Uint16Array(1) } });
    expect(() => findWeights(d)).toThrow(/variant weights exist \(diffusion_pytorch_model\.fp16\.safetensors\): pass \{ variant: "fp16" \}/);
  });

  test("BF16 and F16 on disk load as float32 / bfloat16", async () => {
    const file = path.join(dir("bf16"), "w.safetensors");
    writeSafetensors(file, { b: { dtype: "BF16", shape: [6], data: float32ToBfloat16(B) }, h: { dtype: "F16", shape: [2, 3], data: float32ToFloat16(B) } });
    const w = SafetensorsStateDict.open(file);
    try {
      expect(Array.from(await w.load("b", { dtype: "float32", device: "cpu" }).toFloat32Array())).toEqual(Array.from(bfloat16ToFloat32(float32ToBfloat16(B))));
      const tb = w.load("b", { dtype: "bfloat16", device: "cpu" });
      expect(tb.dtype).toBe("bfloat16");
      expect(Array.from(await tb.toFloat32Array())).toEqual(Array.from(bfloat16ToFloat32(float32ToBfloat16(B))));
      expect(Array.from(w.readFloat32("h"))).toEqual(Array.from(float16ToFloat32(float32ToFloat16(B))));
      expect(() => w.load("nope", { dtype: "float32", device: "cpu" })).toThrow(/no tensor named "nope" \(2 tensors/);
    } finally {
      w.close();
    }
  });

  test("integer tensors are not loaded as float parameters", () => {
    const file = path.join(dir("ints"), "w.safetensors");
    writeSafetensors(file, { ids: { dtype: "I64", shape: [2], data: BigInt64Array.from([1n, 2n]) } });
    const w = SafetensorsStateDict.open(file);
    try {
      expect(() => w.load("ids", { dtype: "float32", device: "cpu" })).toThrow(/is I64, not a float parameter/);
    } finally {
      w.close();
    }
  });
});

describe("sharded checkpoints", () => {
  function shards(name: string, index: unknown, files: Record<string, Record<string, SafetensorsTensorInput>>): string {
    const d = dir(name, "unet");
    for (const [f, t] of Object.entries(files)) writeSafetensors(path.join(d, f), t);
    fs.writeFileSync(path.join(d, "diffusion_pytorch_model.safetensors.index.json"), JSON.stringify(index));
    return d;
  }

  test("an index with two shards loads every key", async () => {
    const d = shards("sharded", { metadata: { total_size: 72 }, weight_map: { a: "diffusion_pytorch_model-00001-of-00002.safetensors", b: "diffusion_pytorch_model-00002-of-00002.safetensors" } }, {
      "diffusion_pytorch_model-00001-of-00002.safetensors": { a: f32([3, 4], A) },
      "diffusion_pytorch_model-00002-of-00002.safetensors": { b: f32([6], B) },
    });
    const loc = findWeights(d);
    expect(loc.sharded).toBe(true);
    const w = openWeightsFile(loc.file);
    try {
      expect(w.keys().sort()).toEqual(["a", "b"]);
      expect(w.files.length).toBe(2);
      expect(Array.from(w.readFloat32("b"))).toEqual(Array.from(B));
      expect(path.basename(w.fileOf("a"))).toBe("diffusion_pytorch_model-00001-of-00002.safetensors");
    } finally {
      w.close();
    }
  });

  test("fp16 variant index name", () => {
    const d = dir("sharded-fp16", "unet");
    writeSafetensors(path.join(d, "diffusion_pytorch_model.fp16-00001-of-00001.safetensors"), { a: { dtype: "F16", shape: [1], data: new Uint16Array(1) } });
    fs.writeFileSync(path.join(d, "diffusion_pytorch_model.safetensors.index.fp16.json"), JSON.stringify({ weight_map: { a: "diffusion_pytorch_model.fp16-00001-of-00001.safetensors" } }));
    const loc = findWeights(d, { variant: "fp16" });
    expect(loc).toMatchObject({ sharded: true, variant: "fp16" });
    openWeightsFile(loc.file).close();
  });

  test("a missing shard, a key not in its shard, a shard outside the folder, a duplicate key", () => {
    const one = { a: f32([3, 4], A) };
    let d = shards("missing-shard", { weight_map: { a: "s1.safetensors", b: "s2.safetensors" } }, { "s1.safetensors": one });
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/shard s2\.safetensors is missing/);
    d = shards("wrong-shard", { weight_map: { a: "s1.safetensors", b: "s1.safetensors" } }, { "s1.safetensors": one });
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/weight_map puts "b" in s1\.safetensors, which does not hold it/);
    d = shards("escape", { weight_map: { a: "../s1.safetensors" } }, {});
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/not a file in the index's folder/);
    d = shards("pickle-shard", { weight_map: { a: "pytorch_model-00001.bin" } }, {});
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/is not a \.safetensors file/);
    d = shards("dup", { weight_map: { a: "s1.safetensors", b: "s2.safetensors" } }, { "s1.safetensors": one, "s2.safetensors": { a: f32([3, 4], A), b: f32([6], B) } });
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/tensor "a" appears in both/);
    d = shards("no-map", { metadata: {} }, {});
    expect(() => openWeightsFile(findWeights(d).file)).toThrow(/"weight_map"/);
  });
});

describe("key renaming and views", () => {
  let file: string;
  beforeAll(() => {
    file = path.join(dir("rename"), "ckpt.safetensors");
    writeSafetensors(file, {
      "model.diffusion_model.conv_in.weight": f32([3, 4], A),
      "first_stage_model.quant_conv.bias": f32([6], B),
      "cond_stage_model.transformer.text_model.embeddings.position_ids": { dtype: "I64", shape: [1], data: BigInt64Array.from([0n]) },
    });
  });

  test("stripPrefix keeps one component; mapKey renames and drops", () => {
    const u = SafetensorsStateDict.open(file, { stripPrefix: "model.diffusion_model." });
    expect(u.keys()).toEqual(["conv_in.weight"]);
    expect(Array.from(u.readFloat32("conv_in.weight"))).toEqual(Array.from(A));
    u.close();
    const m = SafetensorsStateDict.open(file, { mapKey: (k) => (k.endsWith("position_ids") ? null : k.replace("first_stage_model.", "vae.")) });
    expect(m.keys().sort()).toEqual(["model.diffusion_model.conv_in.weight", "vae.quant_conv.bias"]);
    m.close();
    expect(() => SafetensorsStateDict.open(file, { mapKey: () => "same" })).toThrow(/both map to "same"/);
  });

  test("filter, prefix and rename views; LazyStateDict", async () => {
    const w = SafetensorsStateDict.open(file);
    try {
      const f = filterStateDict(w, (k) => !k.endsWith("position_ids"));
      expect(f.keys().length).toBe(2);
      const p = prefixStateDict(w, "first_stage_model.");
      expect(p.keys()).toEqual(["quant_conv.bias"]);
      expect(p.shape("quant_conv.bias")).toEqual([6]);
      const t = p.load("quant_conv.bias", { dtype: "float32", device: "cpu" });
      expect(Array.from(await t.toFloat32Array())).toEqual(Array.from(B));
      t.dispose();
      const r = renameStateDict(w, (k) => k.toUpperCase());
      expect(r.readFloat32("FIRST_STAGE_MODEL.QUANT_CONV.BIAS").length).toBe(6);
      expect(() => r.shape("x")).toThrow(/no tensor named "x"/);
      const all = readAllFloat32(p);
      const lazy = LazyStateDict.fromArrays(all);
      expect(lazy.keys()).toEqual(["quant_conv.bias"]);
      const u = lazy.load("quant_conv.bias", { dtype: "float32", device: "cpu" });
      expect(Array.from(await u.toFloat32Array())).toEqual(Array.from(B));
      u.dispose();
      expect(() => LazyStateDict.fromArrays({ x: { shape: [2, 2], data: new Float32Array(3) } })).toThrow(/3 values for shape \[2,2\]/);
    } finally {
      w.close();
    }
  });

  test("tensors created by load are independent of the source", async () => {
    const lazy = LazyStateDict.fromArrays({ x: { shape: [2], data: Float32Array.from([1, 2]) } });
    const t = lazy.load("x", { dtype: "float32", device: "cpu" });
    expect(t).toBeInstanceOf(Tensor);
    expect(Array.from(await t.toFloat32Array())).toEqual([1, 2]);
    t.dispose();
  });
});
