/**
 * Single-file Stable Diffusion checkpoints (the original CompVis/Stability "LDM" key names, as
 * `.safetensors`) <-> diffusers/transformers state dicts, for SD 1.x and 2.x.
 *
 *   model.diffusion_model.*                 UNet   (input_blocks / middle_block / output_blocks)
 *   first_stage_model.*                     VAE    (encoder.down / mid / decoder.up, 1x1-conv attention)
 *   cond_stage_model.transformer.*          SD1 text encoder, already transformers-named
 *   cond_stage_model.model.*                SD2 text encoder, OpenCLIP-named (fused in_proj q/k/v)
 *
 * The mapping is generated from the diffusers configs (block types, layers_per_block, which
 * levels have attention, the text encoder's layer count and projection), walking the same
 * structure as lib/models/param-shapes.ts, so it is not tied to SD1.5's sizes. Every diffusers
 * parameter is one `Link`: which single-file tensor(s) it comes from and how (copy, drop the 1x1
 * conv dims, one third of a fused in_proj, transpose). Conversion is lazy: values are read and
 * transformed on the host when a model loads them.
 */
import type { HostStateDictSource } from "../io/state-dict";
import { LazyStateDict, renameStateDict, type LazyEntry } from "../io/state-dict";
import { clipTextParamShapes, unetParamShapes, unetStructure, vaeParamShapes, vaeStructure, type ParamShapes } from "./param-shapes";

type Json = Record<string, unknown>;

export type SingleFileComponent = "unet" | "vae" | "textEncoder";
export type TextEncoderFormat = "transformers" | "openclip";

export interface SingleFileConfigs {
  /** diffusers UNet2DConditionModel config.json */
  unet?: Json;
  /** diffusers AutoencoderKL config.json */
  vae?: Json;
  /** transformers CLIPTextModel config.json */
  textEncoder?: Json;
}

export const UNET_PREFIX = "model.diffusion_model.";
export const VAE_PREFIX = "first_stage_model.";
export const TEXT_PREFIX_TRANSFORMERS = "cond_stage_model.transformer.";
export const TEXT_PREFIX_OPENCLIP = "cond_stage_model.model.";
/** SDXL single files: CLIP-L in transformers names, OpenCLIP bigG in OpenCLIP names. */
export const SDXL_TEXT_PREFIX_1 = "conditioner.embedders.0.transformer.";
export const SDXL_TEXT_PREFIX_2 = "conditioner.embedders.1.model.";

/** Whether a single file is SDXL's (a second, OpenCLIP text encoder under conditioner.embedders.1). */
export function isSdxlSingleFile(keys: readonly string[]): boolean {
  return keys.some((k) => k.startsWith(SDXL_TEXT_PREFIX_2));
}

/**
 * An SDXL single file seen as two SD-style ones the converter reads: `main` holds the U-Net, the
 * VAE and the first text encoder (under cond_stage_model.transformer.), `second` the second text
 * encoder (under cond_stage_model.model.); other conditioner keys are left out.
 */
export function sdxlSingleFileSources(source: HostStateDictSource): { main: HostStateDictSource; second: HostStateDictSource } {
  const main = renameStateDict(source, (k) => (k.startsWith(SDXL_TEXT_PREFIX_1) ? TEXT_PREFIX_TRANSFORMERS + k.slice(SDXL_TEXT_PREFIX_1.length) : k.startsWith("conditioner.") ? null : k));
  const second = renameStateDict(source, (k) => (k.startsWith(SDXL_TEXT_PREFIX_2) ? TEXT_PREFIX_OPENCLIP + k.slice(SDXL_TEXT_PREFIX_2.length) : null));
  return { main, second };
}

/** How a diffusers parameter is made from single-file tensors. */
export type LinkKind =
  | "copy"
  /** VAE attention: [C,C,1,1] 1x1 conv <-> [C,C] linear. */
  | "squeeze"
  /** OpenCLIP in_proj: part `part` (0 q, 1 k, 2 v) of the rows of a fused [3D, ...] tensor. */
  | "split3"
  /** OpenCLIP text_projection [D, P] (x @ W) <-> transformers Linear weight [P, D]. */
  | "transpose";

export interface Link {
  component: SingleFileComponent;
  /** The diffusers/transformers key inside its component. */
  key: string;
  shape: number[];
  /** The single-file key. */
  source: string;
  kind: LinkKind;
  part?: number;
}

// ---- the mapping, generated from the configs

function unetLinks(cfg: Json): Link[] {
  const s = unetStructure(cfg);
  const shapes = unetParamShapes(cfg);
  const prefixes: [string, string][] = [
    ["conv_in.", "input_blocks.0.0."],
    ["time_embedding.linear_1.", "time_embed.0."],
    ["time_embedding.linear_2.", "time_embed.2."],
    ["add_embedding.linear_1.", "label_emb.0.0."],
    ["add_embedding.linear_2.", "label_emb.0.2."],
    ["class_embedding.weight", "label_emb.weight"],
    ["conv_norm_out.", "out.0."],
    ["conv_out.", "out.2."],
  ];
  const resnet = (d: string, l: string) => {
    for (const [a, b] of [["norm1.", "in_layers.0."], ["conv1.", "in_layers.2."], ["time_emb_proj.", "emb_layers.1."],
      ["norm2.", "out_layers.0."], ["conv2.", "out_layers.3."], ["conv_shortcut.", "skip_connection."]] as const)
      prefixes.push([`${d}.${a}`, `${l}.${b}`]);
  };
  // input_blocks: 0 is conv_in, then per level its layers (resnet .0 + attention .1) and a downsampler block.
  let block = 1;
  s.down.forEach((d, i) => {
    for (let j = 0; j < d.layers; j++, block++) {
      resnet(`down_blocks.${i}.resnets.${j}`, `input_blocks.${block}.0`);
      if (d.attention) prefixes.push([`down_blocks.${i}.attentions.${j}.`, `input_blocks.${block}.1.`]);
    }
    if (d.downsample) prefixes.push([`down_blocks.${i}.downsamplers.0.conv.`, `input_blocks.${block++}.0.op.`]);
  });
  if (s.mid) {
    resnet("mid_block.resnets.0", "middle_block.0");
    if (s.mid.attention) {
      prefixes.push(["mid_block.attentions.0.", "middle_block.1."]);
      resnet("mid_block.resnets.1", "middle_block.2");
    }
  }
  // output_blocks: per level layers+1 blocks; the upsampler sits in the level's last block, after the attention if any.
  block = 0;
  s.up.forEach((u, i) => {
    for (let j = 0; j < u.layers; j++, block++) {
      resnet(`up_blocks.${i}.resnets.${j}`, `output_blocks.${block}.0`);
      if (u.attention) prefixes.push([`up_blocks.${i}.attentions.${j}.`, `output_blocks.${block}.1.`]);
    }
    if (u.upsample) prefixes.push([`up_blocks.${i}.upsamplers.0.conv.`, `output_blocks.${block - 1}.${u.attention ? 2 : 1}.conv.`]);
  });
  if (s.timeCondProjDim !== null) throw new Error("single-file: time_cond_proj_dim (LCM) has no original-checkpoint name");
  if (s.classEmbedding && s.classEmbedding.type !== "embedding")
    throw new Error(`single-file: class_embed_type "${s.classEmbedding.type}" has no original-checkpoint name`);
  return byPrefix("unet", shapes, prefixes, UNET_PREFIX);
}

function vaeLinks(cfg: Json): Link[] {
  const s = vaeStructure(cfg);
  const shapes = vaeParamShapes(cfg);
  const n = s.blockOutChannels.length;
  const prefixes: [string, string][] = [
    ["encoder.conv_norm_out.", "encoder.norm_out."],
    ["decoder.conv_norm_out.", "decoder.norm_out."],
  ];
  const resnet = (d: string, l: string) => {
    prefixes.push([`${d}.conv_shortcut.`, `${l}.nin_shortcut.`]);
    prefixes.push([`${d}.`, `${l}.`]);  // norm1, conv1, norm2, conv2 keep their names
  };
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < s.layersPerBlock; j++) resnet(`encoder.down_blocks.${i}.resnets.${j}`, `encoder.down.${i}.block.${j}`);
    prefixes.push([`encoder.down_blocks.${i}.downsamplers.0.`, `encoder.down.${i}.downsample.`]);
    // the decoder's up list is indexed by resolution in the original code: reversed
    for (let j = 0; j < s.layersPerBlock + 1; j++) resnet(`decoder.up_blocks.${i}.resnets.${j}`, `decoder.up.${n - 1 - i}.block.${j}`);
    prefixes.push([`decoder.up_blocks.${i}.upsamplers.0.`, `decoder.up.${n - 1 - i}.upsample.`]);
  }
  for (const side of ["encoder", "decoder"]) {
    resnet(`${side}.mid_block.resnets.0`, `${side}.mid.block_1`);
    resnet(`${side}.mid_block.resnets.1`, `${side}.mid.block_2`);
    for (const [a, b] of [["group_norm.", "norm."], ["to_q.", "q."], ["to_k.", "k."], ["to_v.", "v."], ["to_out.0.", "proj_out."]])
      prefixes.push([`${side}.mid_block.attentions.0.${a}`, `${side}.mid.attn_1.${b}`]);
  }
  const links = byPrefix("vae", shapes, prefixes, VAE_PREFIX);
  for (const l of links) if (/mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(l.key)) l.kind = "squeeze";
  return links;
}

function textLinks(cfg: Json, format: TextEncoderFormat): Link[] {
  const shapes = clipTextParamShapes(cfg);
  if (format === "transformers") {
    return [...shapes].map(([key, shape]) => ({ component: "textEncoder" as const, key, shape, source: TEXT_PREFIX_TRANSFORMERS + key, kind: "copy" as const }));
  }
  const links: Link[] = [];
  for (const [key, shape] of shapes) {
    const link = (source: string, kind: LinkKind = "copy", part?: number) =>
      links.push({ component: "textEncoder", key, shape, source: TEXT_PREFIX_OPENCLIP + source, kind, ...(part === undefined ? {} : { part }) });
    let m: RegExpMatchArray | null;
    if (key === "text_model.embeddings.token_embedding.weight") link("token_embedding.weight");
    else if (key === "text_model.embeddings.position_embedding.weight") link("positional_embedding");
    else if ((m = key.match(/^text_model\.final_layer_norm\.(weight|bias)$/))) link(`ln_final.${m[1]}`);
    else if (key === "text_projection.weight") link("text_projection", "transpose");
    else if ((m = key.match(/^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$/))) {
      const [, i, mod, wb] = m;
      const block = `transformer.resblocks.${i}`;
      const qkv = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].indexOf(mod);
      if (qkv >= 0) link(`${block}.attn.in_proj_${wb}`, "split3", qkv);
      else {
        const name = { "self_attn.out_proj": "attn.out_proj", layer_norm1: "ln_1", layer_norm2: "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj" }[mod];
        if (!name) throw new Error(`single-file: no OpenCLIP name for ${key}`);
        link(`${block}.${name}.${wb}`);
      }
    } else throw new Error(`single-file: no OpenCLIP name for ${key}`);
  }
  return links;
}

/** Links for every key of `shapes`, renamed by the longest matching prefix (keys with none keep their name). */
function byPrefix(component: SingleFileComponent, shapes: ParamShapes, prefixes: [string, string][], outerPrefix: string): Link[] {
  const sorted = [...prefixes].sort((a, b) => b[0].length - a[0].length);
  const links: Link[] = [];
  for (const [key, shape] of shapes) {
    const hit = sorted.find(([d]) => key.startsWith(d));
    const renamed = hit ? hit[1] + key.slice(hit[0].length) : key;
    links.push({ component, key, shape, source: outerPrefix + renamed, kind: "copy" });
  }
  return links;
}

/** Every diffusers parameter the configs define, with its single-file origin. */
export function singleFileLinks(configs: SingleFileConfigs, opts: { textEncoderFormat?: TextEncoderFormat } = {}): Link[] {
  const links: Link[] = [];
  if (configs.unet) links.push(...unetLinks(configs.unet));
  if (configs.vae) links.push(...vaeLinks(configs.vae));
  if (configs.textEncoder) links.push(...textLinks(configs.textEncoder, opts.textEncoderFormat ?? "transformers"));
  const seen = new Map<string, string>();
  for (const l of links) {
    if (l.kind === "split3") continue;
    const prev = seen.get(l.source);
    if (prev) throw new Error(`single-file: ${l.component}.${l.key} and ${prev} both map to ${l.source} (config not supported)`);
    seen.set(l.source, `${l.component}.${l.key}`);
  }
  return links;
}

/** The single-file tensor's shape for a link. */
function sourceShape(l: Link): number[] {
  switch (l.kind) {
    case "copy": return l.shape;
    case "squeeze": return [...l.shape, 1, 1];
    case "split3": return [3 * l.shape[0], ...l.shape.slice(1)];
    case "transpose": return [...l.shape].reverse();
  }
}

const stripOnes = (s: readonly number[]) => {
  const out = [...s];
  while (out.length > 2 && out[out.length - 1] === 1) out.pop();
  return out;
};
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

function transpose2d(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c];
  return out;
}

// ---- format detection

/** Which text-encoder naming a single-file checkpoint uses, or null when it has none. */
export function detectTextEncoderFormat(keys: readonly string[]): TextEncoderFormat | null {
  if (keys.some((k) => k.startsWith(TEXT_PREFIX_OPENCLIP))) return "openclip";
  if (keys.some((k) => k.startsWith(TEXT_PREFIX_TRANSFORMERS))) return "transformers";
  return null;
}

/**
 * What a single-file checkpoint looks like, to choose configs: SD1.x has a transformers-named
 * CLIP-L text encoder and 768-wide cross-attention, SD2.x OpenCLIP-H and 1024.
 */
export interface SingleFileInfo {
  textEncoder: TextEncoderFormat | null;
  crossAttentionDim: number | null;
  family: "sd1" | "sd2" | null;
  /** The U-Net's input channels from conv_in (9 for an inpainting checkpoint), null without one. */
  unetInChannels: number | null;
}

export function inspectSingleFile(source: HostStateDictSource): SingleFileInfo {
  const keys = source.keys();
  const textEncoder = detectTextEncoderFormat(keys);
  const k = keys.find((x) => x.startsWith(UNET_PREFIX) && x.endsWith(".attn2.to_k.weight"));
  const crossAttentionDim = k ? source.shape(k)[1] : null;
  const family = textEncoder === "transformers" && crossAttentionDim === 768 ? "sd1" : textEncoder === "openclip" && crossAttentionDim === 1024 ? "sd2" : null;
  const convIn = `${UNET_PREFIX}input_blocks.0.0.weight`;
  const unetInChannels = keys.includes(convIn) && source.shape(convIn).length === 4 ? source.shape(convIn)[1] : null;
  return { textEncoder, crossAttentionDim, family, unetInChannels };
}

// ---- single file -> diffusers

export interface SingleFileConversion {
  /** Per component, a source with diffusers/transformers keys (only components with a config). */
  unet?: LazyStateDict;
  vae?: LazyStateDict;
  textEncoder?: LazyStateDict;
  /** "component.key" -> single-file key, for every converted parameter. */
  keyMap: Map<string, string>;
  /** Single-file keys no parameter came from (EMA copies, schedule buffers, position_ids, SD2's unused last layer...). */
  unused: string[];
  textEncoderFormat: TextEncoderFormat | null;
}

export interface ConvertOptions {
  /** Default: detected from the keys. */
  textEncoderFormat?: TextEncoderFormat;
  /** false: leave out parameters the file lacks instead of throwing (the model load then names them). */
  strict?: boolean;
}

/**
 * Maps a single-file checkpoint to diffusers-named sources for the components whose configs are
 * given. Shapes are checked against the configs now; values are read when loaded.
 */
export function convertSingleFileToDiffusers(source: HostStateDictSource, configs: SingleFileConfigs, opts: ConvertOptions = {}): SingleFileConversion {
  const keys = source.keys();
  const have = new Set(keys);
  const format = opts.textEncoderFormat ?? detectTextEncoderFormat(keys);
  if (configs.textEncoder && format === null)
    throw new Error(`single-file: no text encoder in the checkpoint (no ${TEXT_PREFIX_TRANSFORMERS}* or ${TEXT_PREFIX_OPENCLIP}* keys)`);
  const links = singleFileLinks(configs, { textEncoderFormat: format ?? "transformers" });
  const entries: Record<SingleFileComponent, Map<string, LazyEntry>> = { unet: new Map(), vae: new Map(), textEncoder: new Map() };
  const keyMap = new Map<string, string>();
  const used = new Set<string>();
  const missing: string[] = [], mismatched: string[] = [];
  for (const l of links) {
    if (!have.has(l.source)) { missing.push(`${l.source} (-> ${l.component}.${l.key})`); continue; }
    const got = source.shape(l.source), want = sourceShape(l);
    const ok = sameShape(got, want) || ((l.kind === "copy" || l.kind === "squeeze") && sameShape(stripOnes(got), stripOnes(want)));
    if (!ok) { mismatched.push(`${l.source} [${got.join(",")}] (-> ${l.component}.${l.key} needs [${want.join(",")}])`); continue; }
    used.add(l.source);
    keyMap.set(`${l.component}.${l.key}`, l.source);
    entries[l.component].set(l.key, { shape: l.shape, read: reader(source, l) });
  }
  const strict = opts.strict ?? true;
  if (mismatched.length || (strict && missing.length)) {
    const list = (xs: string[]) => xs.slice(0, 12).join(", ") + (xs.length > 12 ? `, ... (${xs.length} in all)` : "");
    const parts: string[] = [];
    if (mismatched.length) parts.push(`shape mismatches ${list(mismatched)}`);
    if (missing.length) parts.push(`missing ${list(missing)}`);
    throw new Error(`single-file checkpoint does not fit the configs (wrong model family or configs?): ${parts.join("; ")}`);
  }
  const out: SingleFileConversion = { keyMap, unused: keys.filter((k) => !used.has(k)), textEncoderFormat: format };
  if (configs.unet) out.unet = new LazyStateDict(entries.unet, "single-file unet");
  if (configs.vae) out.vae = new LazyStateDict(entries.vae, "single-file vae");
  if (configs.textEncoder) out.textEncoder = new LazyStateDict(entries.textEncoder, "single-file text encoder");
  return out;
}

function reader(source: HostStateDictSource, l: Link): () => Float32Array {
  switch (l.kind) {
    case "copy":
    case "squeeze":
      return () => source.readFloat32(l.source);  // same values, the shape alone changes
    case "split3": {
      const per = l.shape.reduce((a, b) => a * b, 1);
      return () => source.readFloat32(l.source).slice(l.part! * per, (l.part! + 1) * per);
    }
    case "transpose": {
      const [rows, cols] = sourceShape(l);
      return () => transpose2d(source.readFloat32(l.source), rows, cols);
    }
  }
}

// ---- diffusers -> single file

/**
 * The inverse: a single-file state dict (original key names) from diffusers-named component
 * sources. OpenCLIP q/k/v are fused back into in_proj. Only what the configs describe is written
 * (no EMA copy, no schedule buffers).
 */
export function convertDiffusersToSingleFile(
  components: Partial<Record<SingleFileComponent, HostStateDictSource>>,
  configs: SingleFileConfigs,
  opts: { textEncoderFormat?: TextEncoderFormat } = {},
): LazyStateDict {
  const use: SingleFileConfigs = {};
  for (const c of ["unet", "vae", "textEncoder"] as const) {
    if (configs[c] && components[c]) use[c] = configs[c];
    else if (components[c]) throw new Error(`convertDiffusersToSingleFile: no config for the ${c} component`);
  }
  const links = singleFileLinks(use, opts);
  const entries = new Map<string, LazyEntry>();
  const fused = new Map<string, Link[]>();
  for (const l of links) {
    const src = components[l.component]!;
    const got = src.shape(l.key);
    if (!sameShape(got, l.shape))
      throw new Error(`convertDiffusersToSingleFile: ${l.component}.${l.key} is [${got.join(",")}], the config says [${l.shape.join(",")}]`);
    if (l.kind === "split3") {
      fused.set(l.source, [...(fused.get(l.source) ?? []), l]);
      continue;
    }
    const shape = sourceShape(l);
    entries.set(l.source, {
      shape,
      read: l.kind === "transpose" ? () => transpose2d(src.readFloat32(l.key), l.shape[0], l.shape[1]) : () => src.readFloat32(l.key),
    });
  }
  for (const [key, parts] of fused) {
    parts.sort((a, b) => a.part! - b.part!);
    if (parts.length !== 3) throw new Error(`convertDiffusersToSingleFile: ${key} needs q, k and v`);
    entries.set(key, {
      shape: sourceShape(parts[0]),
      read: () => {
        const chunks = parts.map((p) => components[p.component]!.readFloat32(p.key));
        const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
        let at = 0;
        for (const c of chunks) { out.set(c, at); at += c.length; }
        return out;
      },
    });
  }
  return new LazyStateDict(entries, "single-file state dict");
}
