/**
 * param-shapes: the (key, shape) lists derived from configs must match the tiny reference
 * checkpoints key for key and shape for shape, and the full-size configs' parameter counts must
 * equal the counts diffusers/transformers report (configs/param_counts.json).
 */
import * as fs from "fs";
import * as path from "path";
import { SafetensorsFile } from "../../lib/io/safetensors";
import { clipTextParamShapes, countParams, unetParamShapes, unetStructure, vaeParamShapes, type ParamShapes } from "../../lib/models/param-shapes";
import { describeIfReference, referencePath } from "../helpers/reference";

function json(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

function expectMatchesFile(shapes: ParamShapes, file: string): void {
  const f = SafetensorsFile.open(file);
  try {
    const onDisk = new Map(f.keys().map((k) => [k, f.info(k).shape]));
    const missing = [...onDisk.keys()].filter((k) => !shapes.has(k));
    const extra = [...shapes.keys()].filter((k) => !onDisk.has(k));
    expect({ missing, extra }).toEqual({ missing: [], extra: [] });
    for (const [k, s] of shapes) expect([k, s]).toEqual([k, onDisk.get(k)]);
  } finally {
    f.close();
  }
}

describeIfReference("param shapes match the tiny reference checkpoints", () => {
  const cases: [string, string, (c: Record<string, unknown>) => ParamShapes][] = [
    ["tiny-sd", "unet", unetParamShapes], ["tiny-sd", "vae", vaeParamShapes], ["tiny-sd", "text_encoder", clipTextParamShapes],
    ["tiny-sd-inpaint", "unet", unetParamShapes],
    ["tiny-sdxl", "unet", unetParamShapes], ["tiny-sdxl", "vae", vaeParamShapes],
    ["tiny-sdxl", "text_encoder", clipTextParamShapes], ["tiny-sdxl", "text_encoder_2", clipTextParamShapes],
  ];
  test.each(cases)("%s/%s", (model, comp, fn) => {
    const dir = referencePath("models", model, comp);
    const weights = fs.readdirSync(dir).find((f) => f.endsWith(".safetensors"))!;
    expectMatchesFile(fn(json(path.join(dir, "config.json"))), path.join(dir, weights));
  });
});

describeIfReference("param counts of the full-size configs", () => {
  const counts = (): Record<string, number> => json(referencePath("configs/param_counts.json")) as Record<string, number>;
  test("every entry of param_counts.json", () => {
    const got: Record<string, number> = {};
    for (const k of Object.keys(counts())) {
      const cfg = json(referencePath("configs", k));
      const fn = k.includes("/unet/") ? unetParamShapes : k.includes("/vae/") ? vaeParamShapes : clipTextParamShapes;
      got[k] = countParams(fn(cfg));
    }
    expect(got).toEqual(counts());
  });

  test("SD1.5 UNet structure", () => {
    const s = unetStructure(json(referencePath("configs/sd15/unet/config.json")));
    expect(s.down.map((d) => [d.type, d.layers, d.attention?.heads ?? null, d.downsample])).toEqual([
      ["CrossAttnDownBlock2D", 2, 8, true], ["CrossAttnDownBlock2D", 2, 8, true], ["CrossAttnDownBlock2D", 2, 8, true], ["DownBlock2D", 2, null, false]]);
    expect(s.up.map((u) => [u.type, u.layers, u.upsample])).toEqual([
      ["UpBlock2D", 3, true], ["CrossAttnUpBlock2D", 3, true], ["CrossAttnUpBlock2D", 3, true], ["CrossAttnUpBlock2D", 3, false]]);
    expect(s.mid?.attention).toMatchObject({ heads: 8, headDim: 160, layers: 1, crossAttentionDim: 768 });
  });
});

describe("param shapes: unsupported configs are errors", () => {
  const base = { block_out_channels: [32, 64], down_block_types: ["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups: 8 };
  test.each([
    [{ dual_cross_attention: true }, /dual_cross_attention true is not supported/],
    [{ time_embedding_type: "fourier" }, /time_embedding_type "fourier"/],
    [{ attention_type: "gated" }, /attention_type "gated"/],
    [{ down_block_types: ["SimpleCrossAttnDownBlock2D", "DownBlock2D"] }, /down block type "SimpleCrossAttnDownBlock2D" is not supported/],
    [{ up_block_types: ["UpBlock2D"] }, /up_block_types must list 2 blocks/],
    [{ layers_per_block: [2] }, /layers_per_block has 1 entries for 2 blocks/],
    [{ addition_embed_type: "text" }, /addition_embed_type "text"/],
    [{ addition_embed_type: "text_time" }, /needs projection_class_embeddings_input_dim/],
    [{ encoder_hid_dim_type: "text_proj" }, /encoder_hid_dim_type/],
  ])("UNet %j", (patch, msg) => {
    expect(() => unetParamShapes({ ...base, ...patch })).toThrow(msg);
  });
  test("VAE", () => {
    expect(() => vaeParamShapes({ block_out_channels: [32], down_block_types: ["DownBlock2D"], up_block_types: ["UpDecoderBlock2D"] })).toThrow(/down_block_types must be 1 x "DownEncoderBlock2D"/);
    expect(() => vaeParamShapes({ _class_name: "AutoencoderTiny", block_out_channels: [32] })).toThrow(/_class_name must be AutoencoderKL/);
  });
  test("optional embeddings add their parameters", () => {
    const s = unetParamShapes({ ...base, num_class_embeds: 10, time_cond_proj_dim: 16, class_embeddings_concat: true });
    expect(s.get("class_embedding.weight")).toEqual([10, 128]);
    expect(s.get("time_embedding.cond_proj.weight")).toEqual([32, 16]);
    expect(s.get("down_blocks.0.resnets.0.time_emb_proj.weight")).toEqual([32, 256]);
    const t = unetParamShapes({ ...base, resnet_time_scale_shift: "scale_shift", class_embed_type: "timestep" });
    expect(t.get("down_blocks.0.resnets.0.time_emb_proj.weight")).toEqual([64, 128]);
    expect(t.get("class_embedding.linear_1.weight")).toEqual([128, 32]);
  });
});
