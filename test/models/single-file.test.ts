/**
 * Single-file (original LDM key names) <-> diffusers conversion: round trips of the tiny reference
 * folders through a written .safetensors file (identical keys and bit-identical tensors), the text
 * encoder run from the converted weights, and the SD1.5 / SD2.1 full-size configs mapped without
 * weights (every parameter covered, spot-checked original names, parameter counts).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { ModelFolder, openWeightsFile } from "../../lib/io/model-folder";
import { LazyStateDict, readAllFloat32, type HostStateDictSource, type LazyEntry } from "../../lib/io/state-dict";
import { CLIPTextModel } from "../../lib/models/clip-text";
import { clipTextParamShapes, countParams, unetParamShapes, vaeParamShapes, type ParamShapes } from "../../lib/models/param-shapes";
import {
  convertDiffusersToSingleFile, convertSingleFileToDiffusers, inspectSingleFile, singleFileLinks,
  type SingleFileConfigs, type TextEncoderFormat,
} from "../../lib/models/single-file";
import { Tensor } from "../../lib/tensor";
import { describeIfReference, referencePath } from "../helpers/reference";
import { SafetensorsFile as RefFile } from "../helpers/read-safetensors";

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-single-")); });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function json(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

function writeHost(file: string, src: HostStateDictSource): void {
  const rec: Record<string, SafetensorsTensorInput> = {};
  for (const [k, t] of readAllFloat32(src)) rec[k] = { dtype: "F32", shape: [...t.shape], data: t.data };
  writeSafetensors(file, rec);
}

/** Bitwise equality of two sources: same keys, shapes and float32 bits. */
function expectIdentical(got: HostStateDictSource, want: HostStateDictSource, label: string): void {
  expect([label, got.keys().sort()]).toEqual([label, want.keys().sort()]);
  for (const k of want.keys()) {
    expect([k, [...got.shape(k)]]).toEqual([k, [...want.shape(k)]]);
    const a = new Uint32Array(got.readFloat32(k).slice().buffer), b = new Uint32Array(want.readFloat32(k).slice().buffer);
    if (a.length !== b.length || a.some((v, i) => v !== b[i])) throw new Error(`${label}: ${k} values differ`);
  }
}

/** A source with shapes only (values are never read by key mapping). */
function shapeOnly(shapes: ParamShapes | Map<string, readonly number[]>): LazyStateDict {
  const entries = new Map<string, LazyEntry>();
  for (const [k, s] of shapes) entries.set(k, { shape: [...s], read: () => { throw new Error(`value of ${k} read`); } });
  return new LazyStateDict(entries);
}

describeIfReference("single-file round trip of the tiny reference folders", () => {
  function roundTrip(model: string, comps: { unet?: string; vae?: string; textEncoder?: string }, format: TextEncoderFormat, name: string) {
    const f = ModelFolder.open(referencePath("models", model));
    const configs: SingleFileConfigs = {};
    const sources: Partial<Record<"unet" | "vae" | "textEncoder", HostStateDictSource>> = {};
    const opened: { close(): void }[] = [];
    for (const [c, folderName] of Object.entries(comps) as ["unet" | "vae" | "textEncoder", string][]) {
      configs[c] = f.config(folderName);
      const w = f.weights(folderName);
      opened.push(w);
      sources[c] = w;
    }
    const file = path.join(tmp, `${name}.safetensors`);
    writeHost(file, convertDiffusersToSingleFile(sources, configs, { textEncoderFormat: format }));
    const single = openWeightsFile(file);
    opened.push(single);
    const conv = convertSingleFileToDiffusers(single, configs);
    return { single, conv, sources, configs, close: () => opened.forEach((o) => o.close()) };
  }

  test("tiny-sd: UNet, VAE and SD1 (transformers-named) text encoder", () => {
    const r = roundTrip("tiny-sd", { unet: "unet", vae: "vae", textEncoder: "text_encoder" }, "transformers", "tiny-sd");
    try {
      const keys = r.single.keys();
      expect(keys.length).toBe(494 + 200 + 52);
      expect(keys.every((k) => /^(model\.diffusion_model|first_stage_model|cond_stage_model\.transformer)\./.test(k))).toBe(true);
      // original names where the tiny structure puts them (3 levels, 2 layers per block)
      const expectedNames: [string, number[]][] = [
        ["model.diffusion_model.input_blocks.0.0.weight", [32, 4, 3, 3]],
        ["model.diffusion_model.input_blocks.1.1.proj_in.weight", [32, 32, 1, 1]],
        ["model.diffusion_model.input_blocks.3.0.op.weight", [32, 32, 3, 3]],
        ["model.diffusion_model.input_blocks.4.0.skip_connection.weight", [64, 32, 1, 1]],
        ["model.diffusion_model.input_blocks.8.0.emb_layers.1.weight", [64, 128]],
        ["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", [64, 32]],
        ["model.diffusion_model.middle_block.2.out_layers.3.weight", [64, 64, 3, 3]],
        ["model.diffusion_model.output_blocks.2.1.conv.weight", [64, 64, 3, 3]],
        ["model.diffusion_model.output_blocks.5.2.conv.weight", [64, 64, 3, 3]],
        ["model.diffusion_model.output_blocks.8.1.proj_out.weight", [32, 32, 1, 1]],
        ["model.diffusion_model.out.0.weight", [32]],
        ["model.diffusion_model.time_embed.2.weight", [128, 128]],
        ["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", [64, 32, 1, 1]],
        ["first_stage_model.encoder.mid.attn_1.q.weight", [64, 64, 1, 1]],
        ["first_stage_model.decoder.mid.attn_1.proj_out.weight", [64, 64, 1, 1]],
        ["first_stage_model.decoder.up.2.block.2.conv2.weight", [64, 64, 3, 3]],
        ["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", [32, 64, 1, 1]],
        ["first_stage_model.decoder.up.1.upsample.conv.weight", [64, 64, 3, 3]],
        ["first_stage_model.decoder.norm_out.bias", [32]],
        ["first_stage_model.quant_conv.weight", [8, 8, 1, 1]],
        ["cond_stage_model.transformer.text_model.encoder.layers.2.self_attn.q_proj.weight", [32, 32]],
      ];
      for (const [k, s] of expectedNames) expect([k, [...r.single.shape(k)]]).toEqual([k, s]);
      expect(r.conv.unused).toEqual([]);
      expect(r.conv.textEncoderFormat).toBe("transformers");
      expectIdentical(r.conv.unet!, r.sources.unet!, "unet");
      expectIdentical(r.conv.vae!, r.sources.vae!, "vae");
      expectIdentical(r.conv.textEncoder!, r.sources.textEncoder!, "text encoder");
      expect(r.conv.keyMap.get("vae.decoder.mid_block.attentions.0.to_q.weight")).toBe("first_stage_model.decoder.mid.attn_1.q.weight");
      expect(r.conv.keyMap.size).toBe(494 + 200 + 52);
    } finally {
      r.close();
    }
  });

  test("tiny-sd text encoder through OpenCLIP names (fused in_proj), then run from the converted weights", async () => {
    const r = roundTrip("tiny-sd", { textEncoder: "text_encoder" }, "openclip", "tiny-sd-openclip");
    try {
      expect(r.single.shape("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")).toEqual([96, 32]);
      expect(r.single.shape("cond_stage_model.model.transformer.resblocks.2.attn.in_proj_bias")).toEqual([96]);
      expect(r.single.shape("cond_stage_model.model.positional_embedding")).toEqual([77, 32]);
      expect(r.single.shape("cond_stage_model.model.ln_final.weight")).toEqual([32]);
      expect(r.single.keys().length).toBe(52 - 3 * 4);  // q/k/v weight+bias fused per layer
      expect(r.conv.textEncoderFormat).toBe("openclip");
      expectIdentical(r.conv.textEncoder!, r.sources.textEncoder!, "openclip text encoder");

      const model = CLIPTextModel.fromConfig(r.configs.textEncoder!);
      model.loadStateDict(r.conv.textEncoder!);
      const ref = RefFile.read(referencePath("cases/text_encoder.safetensors"));
      const ids = Tensor.fromArray(ref.get("input_ids").data as BigInt64Array, [3, 77]);
      const out = model.forward(ids);
      const got = await out.lastHiddenState.toFloat32Array(), want = ref.get("last_hidden_state").data as Float32Array;
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
      expect(err).toBeLessThan(1e-4 * 4);
      [out.lastHiddenState, out.pooled, ids].forEach((t) => t.dispose());
      model.dispose();
    } finally {
      r.close();
    }
  });

  test("tiny-sdxl text_encoder_2 (projection: OpenCLIP [D,P] <-> Linear [P,D]) and tiny-sd-inpaint UNet (9 input channels)", () => {
    const a = roundTrip("tiny-sdxl", { textEncoder: "text_encoder_2" }, "openclip", "tiny-sdxl-te2");
    try {
      expect(a.single.shape("cond_stage_model.model.text_projection")).toEqual([24, 32]);
      const p = a.single.readFloat32("cond_stage_model.model.text_projection"), w = a.sources.textEncoder!.readFloat32("text_projection.weight");
      expect(p[1 * 32 + 5]).toBe(w[5 * 24 + 1]);  // W_openclip[d][p] = W_linear[p][d]
      expectIdentical(a.conv.textEncoder!, a.sources.textEncoder!, "te2");
    } finally {
      a.close();
    }
    const b = roundTrip("tiny-sd-inpaint", { unet: "unet" }, "transformers", "tiny-inpaint");
    try {
      expect(b.single.shape("model.diffusion_model.input_blocks.0.0.weight")).toEqual([32, 9, 3, 3]);
      expectIdentical(b.conv.unet!, b.sources.unet!, "inpaint unet");
    } finally {
      b.close();
    }
  });

  test("configs of another family are refused with the offending keys", () => {
    const file = path.join(tmp, "tiny-sd.safetensors");
    expect(fs.existsSync(file)).toBe(true);  // written by the first test
    const single = openWeightsFile(file);
    try {
      const sd15 = { unet: json(referencePath("configs/sd15/unet/config.json")) };
      expect(() => convertSingleFileToDiffusers(single, sd15)).toThrow(
        /does not fit the configs.*shape mismatches model\.diffusion_model\.input_blocks\.0\.0\.weight \[32,4,3,3\] \(-> unet\.conv_in\.weight needs \[320,4,3,3\]\).*\(493 in all\); missing model\.diffusion_model\.input_blocks\.7\.0\.skip_connection\.weight/);
      // an SD2 (OpenCLIP) text encoder asked of an SD1 file
      const te = { textEncoder: json(referencePath("models/tiny-sd/text_encoder/config.json")) };
      expect(() => convertSingleFileToDiffusers(single, te, { textEncoderFormat: "openclip" })).toThrow(/missing cond_stage_model\.model\.token_embedding\.weight/);
      const vaeOnly = convertSingleFileToDiffusers(single, { vae: json(referencePath("models/tiny-sd/vae/config.json")) });
      expect(vaeOnly.unet).toBeUndefined();
      expect(vaeOnly.unused.length).toBe(494 + 52);
    } finally {
      single.close();
    }
  });
});

describeIfReference("single-file mapping of the full-size configs (no weights)", () => {
  const cfg = (family: string, comp: string) => json(referencePath("configs", family, comp, "config.json"));
  const counts = () => json(referencePath("configs/param_counts.json")) as Record<string, number>;

  function fullSize(family: "sd15" | "sd21", format: TextEncoderFormat) {
    const configs: SingleFileConfigs = { unet: cfg(family, "unet"), vae: cfg(family, "vae"), textEncoder: cfg(family, "text_encoder") };
    const shapes = { unet: unetParamShapes(configs.unet!), vae: vaeParamShapes(configs.vae!), textEncoder: clipTextParamShapes(configs.textEncoder!) };
    const single = convertDiffusersToSingleFile(
      { unet: shapeOnly(shapes.unet), vae: shapeOnly(shapes.vae), textEncoder: shapeOnly(shapes.textEncoder) }, configs, { textEncoderFormat: format });
    return { configs, shapes, single };
  }

  test("SD1.5: every UNet, VAE and CLIP-L parameter has an original name and maps back", () => {
    const { configs, shapes, single } = fullSize("sd15", "transformers");
    const names = new Map(single.keys().map((k) => [k, [...single.shape(k)]]));
    // well-known names of the released v1-5 checkpoint
    const known: [string, number[]][] = [
      ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [320, 768]],
      ["model.diffusion_model.input_blocks.3.0.op.weight", [320, 320, 3, 3]],
      ["model.diffusion_model.input_blocks.11.0.out_layers.3.weight", [1280, 1280, 3, 3]],
      ["model.diffusion_model.middle_block.1.proj_in.weight", [1280, 1280, 1, 1]],
      ["model.diffusion_model.output_blocks.2.1.conv.weight", [1280, 1280, 3, 3]],
      ["model.diffusion_model.output_blocks.5.2.conv.weight", [1280, 1280, 3, 3]],
      ["model.diffusion_model.output_blocks.8.2.conv.weight", [640, 640, 3, 3]],
      ["model.diffusion_model.output_blocks.9.0.skip_connection.weight", [320, 960, 1, 1]],
      ["model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight", [2560, 320]],
      ["model.diffusion_model.out.2.weight", [4, 320, 3, 3]],
      ["first_stage_model.decoder.up.3.block.0.conv1.weight", [512, 512, 3, 3]],
      ["first_stage_model.decoder.up.1.block.0.nin_shortcut.weight", [256, 512, 1, 1]],
      ["first_stage_model.encoder.mid.attn_1.k.weight", [512, 512, 1, 1]],
      ["first_stage_model.post_quant_conv.weight", [4, 4, 1, 1]],
      ["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight", [768, 3072]],
    ];
    for (const [k, s] of known) expect([k, names.get(k)]).toEqual([k, s]);
    expect(names.has("model.diffusion_model.output_blocks.11.2.conv.weight")).toBe(false);
    expect(names.has("model.diffusion_model.input_blocks.12.0.op.weight")).toBe(false);

    // the released file also carries buffers and EMA bookkeeping: they are reported unused
    const extra = new Map<string, number[]>([...names,
      ["cond_stage_model.transformer.text_model.embeddings.position_ids", [1, 77]], ["alphas_cumprod", [1000]], ["model_ema.decay", []]]);
    const src = shapeOnly(extra);
    expect(inspectSingleFile(src)).toEqual({ textEncoder: "transformers", crossAttentionDim: 768, family: "sd1", unetInChannels: 4 });
    const conv = convertSingleFileToDiffusers(src, configs);
    expect(conv.unused.sort()).toEqual(["alphas_cumprod", "cond_stage_model.transformer.text_model.embeddings.position_ids", "model_ema.decay"]);
    for (const c of ["unet", "vae", "textEncoder"] as const) {
      const got = conv[c]!;
      expect(got.keys().sort()).toEqual([...shapes[c].keys()].sort());
      for (const k of got.keys()) expect(got.shape(k)).toEqual(shapes[c].get(k));
    }
    expect(countParams(new Map(conv.unet!.keys().map((k) => [k, [...conv.unet!.shape(k)]])))).toBe(counts()["sd15/unet/config.json"]);
    expect(countParams(new Map(conv.vae!.keys().map((k) => [k, [...conv.vae!.shape(k)]])))).toBe(counts()["sd15/vae/config.json"]);
    expect(countParams(new Map(conv.textEncoder!.keys().map((k) => [k, [...conv.textEncoder!.shape(k)]])))).toBe(counts()["sd15/text_encoder/config.json"]);
    expect(conv.keyMap.size).toBe(686 + 248 + 196);
  });

  test("SD2.1: linear proj_in/out, OpenCLIP-H text encoder with 24 blocks (the 24th unused)", () => {
    const { configs, shapes, single } = fullSize("sd21", "openclip");
    const names = new Map(single.keys().map((k) => [k, [...single.shape(k)]]));
    expect(names.get("model.diffusion_model.input_blocks.1.1.proj_in.weight")).toEqual([320, 320]);
    expect(names.get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")).toEqual([320, 1024]);
    expect(names.get("cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight")).toEqual([3072, 1024]);
    expect(names.get("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight")).toEqual([4096, 1024]);
    expect(names.has("cond_stage_model.model.transformer.resblocks.23.ln_1.weight")).toBe(false);
    // what the released 768-v file has beyond the 23 layers diffusers keeps
    const extra = new Map<string, number[]>([...names,
      ["cond_stage_model.model.transformer.resblocks.23.ln_1.weight", [1024]], ["cond_stage_model.model.text_projection", [1024, 1024]],
      ["cond_stage_model.model.logit_scale", []], ["cond_stage_model.model.attn_mask", [77, 77]]]);
    // a 1x1-conv proj_in (some 2.x conversions) loads into the linear projection too
    extra.set("model.diffusion_model.input_blocks.1.1.proj_in.weight", [320, 320, 1, 1]);
    const src = shapeOnly(extra);
    expect(inspectSingleFile(src)).toEqual({ textEncoder: "openclip", crossAttentionDim: 1024, family: "sd2", unetInChannels: 4 });
    const conv = convertSingleFileToDiffusers(src, configs);
    expect(conv.unused.length).toBe(4);
    for (const c of ["unet", "vae", "textEncoder"] as const) expect(conv[c]!.keys().sort()).toEqual([...shapes[c].keys()].sort());
    expect(conv.unet!.shape("down_blocks.0.attentions.0.proj_in.weight")).toEqual([320, 320]);
    expect(conv.keyMap.get("textEncoder.text_model.encoder.layers.5.self_attn.v_proj.bias")).toBe("cond_stage_model.model.transformer.resblocks.5.attn.in_proj_bias");
    expect(countParams(new Map(conv.unet!.keys().map((k) => [k, [...conv.unet!.shape(k)]])))).toBe(counts()["sd21/unet/config.json"]);
    expect(countParams(new Map(conv.textEncoder!.keys().map((k) => [k, [...conv.textEncoder!.shape(k)]])))).toBe(counts()["sd21/text_encoder/config.json"]);
  });

  test("strict: false leaves missing parameters out; the mapping has no collisions", () => {
    const configs = { vae: cfg("sd15", "vae") };
    const single = convertDiffusersToSingleFile({ vae: shapeOnly(vaeParamShapes(configs.vae)) }, configs);
    const src = new Map(single.keys().map((k) => [k, single.shape(k)]));
    src.delete("first_stage_model.quant_conv.bias");
    expect(() => convertSingleFileToDiffusers(shapeOnly(src), configs)).toThrow(/missing first_stage_model\.quant_conv\.bias \(-> vae\.quant_conv\.bias\)/);
    const loose = convertSingleFileToDiffusers(shapeOnly(src), configs, { strict: false });
    expect(loose.vae!.keys().length).toBe(247);
    expect(singleFileLinks({ unet: cfg("sd15", "unet"), vae: cfg("sd15", "vae"), textEncoder: cfg("sd15", "text_encoder") }).length).toBe(686 + 248 + 196);
  });
});
