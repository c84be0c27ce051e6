/**
 * The parameters (state-dict key -> shape) that diffusers 0.27 builds from a UNet2DConditionModel
 * or AutoencoderKL config.json, and transformers from a CLIP text config, without allocating
 * anything. Used to check checkpoints and key converters against a config, and by the single-file
 * converter for the block structure (`unetStructure`, `vaeStructure`).
 *
 * Config options that would add parameters this table does not know (dual cross-attention, gated
 * attention, Fourier time embeddings, ...) are errors rather than silently wrong lists.
 */
import { CLIPTextModel, type CLIPTextConfigOptions } from "./clip-text";

export type ParamShapes = Map<string, number[]>;
type Json = Record<string, unknown>;

export function countParams(shapes: ParamShapes): number {
  let n = 0;
  for (const s of shapes.values()) n += s.reduce((a, b) => a * b, 1);
  return n;
}

// ---- config reading

function perBlock<T>(what: string, v: unknown, n: number, check: (x: unknown) => x is T): T[] {
  if (Array.isArray(v)) {
    if (v.length !== n) throw new Error(`UNet config: ${what} has ${v.length} entries for ${n} blocks`);
    v.forEach((x) => { if (!check(x)) throw new Error(`UNet config: ${what} entry ${JSON.stringify(x)} is invalid`); });
    return v as T[];
  }
  if (!check(v)) throw new Error(`UNet config: ${what} must be a value or a list of ${n}, got ${JSON.stringify(v)}`);
  return Array.from({ length: n }, () => v);
}

const isPosInt = (x: unknown): x is number => typeof x === "number" && Number.isInteger(x) && x >= 1;
const isBool = (x: unknown): x is boolean => typeof x === "boolean";
const isString = (x: unknown): x is string => typeof x === "string";

function intList(cfg: Json, key: string, where: string): number[] {
  const v = cfg[key];
  if (!Array.isArray(v) || v.length === 0 || !v.every(isPosInt)) throw new Error(`${where} config: ${key} must be a non-empty list of positive integers, got ${JSON.stringify(v)}`);
  return v as number[];
}

function get<T>(cfg: Json, key: string, dflt: T): T {
  const v = cfg[key];
  return (v === undefined ? dflt : v) as T;
}

function requireValue(where: string, cfg: Json, key: string, allowed: unknown[], dflt: unknown): void {
  const v = cfg[key] === undefined ? dflt : cfg[key];
  if (!allowed.some((a) => a === v))
    throw new Error(`${where} config: ${key} ${JSON.stringify(v)} is not supported (supported: ${allowed.map((a) => JSON.stringify(a)).join(", ")})`);
}

// ---- UNet structure

export type UNetDownBlockType = "DownBlock2D" | "CrossAttnDownBlock2D";
export type UNetUpBlockType = "UpBlock2D" | "CrossAttnUpBlock2D";
export type UNetMidBlockType = "UNetMidBlock2DCrossAttn" | "UNetMidBlock2D" | null;

export interface UNetTransformerSpec {
  heads: number;
  headDim: number;
  /** Transformer blocks between proj_in and proj_out. */
  layers: number;
  crossAttentionDim: number;
  onlyCrossAttention: boolean;
}

export interface UNetDownBlockSpec {
  type: UNetDownBlockType;
  inChannels: number;
  outChannels: number;
  /** ResNet (and attention) layers. */
  layers: number;
  attention: UNetTransformerSpec | null;
  downsample: boolean;
}

export interface UNetUpBlockSpec {
  type: UNetUpBlockType;
  /** Channels of the skip from the matching down level's input (`input_channel` in diffusers). */
  inChannels: number;
  outChannels: number;
  prevOutputChannels: number;
  /** ResNet (and attention) layers: the down level's layers + 1. */
  layers: number;
  attention: UNetTransformerSpec | null;
  upsample: boolean;
}

export interface UNetStructure {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  timeEmbedDim: number;
  timestepInputDim: number;
  timeCondProjDim: number | null;
  /** temb width the ResNets see (doubled with class_embeddings_concat). */
  resnetTembDim: number;
  resnetTimeScaleShift: "default" | "scale_shift";
  convInKernel: number;
  convOutKernel: number;
  normNumGroups: number;
  useLinearProjection: boolean;
  classEmbedding: { type: "embedding"; count: number } | { type: "timestep" | "projection"; inputDim: number } | null;
  additionEmbedding: { inputDim: number } | null;
  down: UNetDownBlockSpec[];
  mid: { type: Exclude<UNetMidBlockType, null>; channels: number; attention: UNetTransformerSpec | null } | null;
  up: UNetUpBlockSpec[];
}

/** Reads a UNet2DConditionModel config.json into its block structure (diffusers 0.27 rules). */
export function unetStructure(cfg: Json): UNetStructure {
  const W = "UNet";
  const cls = cfg["_class_name"];
  if (cls !== undefined && cls !== "UNet2DConditionModel") throw new Error(`UNet config: _class_name must be UNet2DConditionModel, got ${JSON.stringify(cls)}`);
  const boc = intList(cfg, "block_out_channels", W);
  const n = boc.length;
  const downTypes = get<unknown>(cfg, "down_block_types", ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]);
  const upTypes = get<unknown>(cfg, "up_block_types", ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]);
  if (!Array.isArray(downTypes) || downTypes.length !== n) throw new Error(`UNet config: down_block_types must list ${n} blocks (one per block_out_channels entry)`);
  if (!Array.isArray(upTypes) || upTypes.length !== n) throw new Error(`UNet config: up_block_types must list ${n} blocks`);
  for (const t of downTypes) if (t !== "DownBlock2D" && t !== "CrossAttnDownBlock2D")
    throw new Error(`UNet config: down block type ${JSON.stringify(t)} is not supported (supported: DownBlock2D, CrossAttnDownBlock2D)`);
  for (const t of upTypes) if (t !== "UpBlock2D" && t !== "CrossAttnUpBlock2D")
    throw new Error(`UNet config: up block type ${JSON.stringify(t)} is not supported (supported: UpBlock2D, CrossAttnUpBlock2D)`);

  requireValue(W, cfg, "time_embedding_type", ["positional"], "positional");
  requireValue(W, cfg, "dual_cross_attention", [false], false);
  requireValue(W, cfg, "attention_type", ["default"], "default");
  requireValue(W, cfg, "encoder_hid_dim_type", [null], null);
  requireValue(W, cfg, "encoder_hid_dim", [null], null);
  requireValue(W, cfg, "resnet_time_scale_shift", ["default", "scale_shift"], "default");
  requireValue(W, cfg, "addition_embed_type", [null, "text_time"], null);
  requireValue(W, cfg, "class_embed_type", [null, "timestep", "projection", "identity"], null);
  requireValue(W, cfg, "mid_block_type", ["UNetMidBlock2DCrossAttn", "UNetMidBlock2D", null], "UNetMidBlock2DCrossAttn");
  requireValue(W, cfg, "class_embeddings_concat", [false, true], false);

  // diffusers reads attention_head_dim as the head count when num_attention_heads is unset (a
  // naming accident it keeps for compatibility).
  const nahRaw = get<unknown>(cfg, "num_attention_heads", null) ?? get<unknown>(cfg, "attention_head_dim", 8);
  const heads = perBlock("num_attention_heads / attention_head_dim", nahRaw, n, isPosInt);
  const lpb = perBlock("layers_per_block", get<unknown>(cfg, "layers_per_block", 2), n, isPosInt);
  const cad = perBlock("cross_attention_dim", get<unknown>(cfg, "cross_attention_dim", 1280), n, isPosInt);
  const tlpb = perBlock("transformer_layers_per_block", get<unknown>(cfg, "transformer_layers_per_block", 1), n, isPosInt);
  const rtlpbRaw = get<unknown>(cfg, "reverse_transformer_layers_per_block", null);
  if (rtlpbRaw !== null && (!Array.isArray(rtlpbRaw) || !rtlpbRaw.every(isPosInt)))
    throw new Error("UNet config: reverse_transformer_layers_per_block must be a list of integers (nested lists are not supported)");
  const rtlpb = rtlpbRaw === null ? [...tlpb].reverse() : perBlock("reverse_transformer_layers_per_block", rtlpbRaw, n, isPosInt);
  const onlyCross = perBlock("only_cross_attention", get<unknown>(cfg, "only_cross_attention", false), n, isBool);
  const useLinear = get<boolean>(cfg, "use_linear_projection", false);
  if (!isBool(useLinear)) throw new Error("UNet config: use_linear_projection must be a boolean");

  const timeEmbeddingDim = get<number | null>(cfg, "time_embedding_dim", null);
  const timeEmbedDim = timeEmbeddingDim ?? boc[0] * 4;
  const timestepInputDim = boc[0];
  const concat = get<boolean>(cfg, "class_embeddings_concat", false);

  let classEmbedding: UNetStructure["classEmbedding"] = null;
  const cet = get<string | null>(cfg, "class_embed_type", null);
  const numClass = get<number | null>(cfg, "num_class_embeds", null);
  const pcei = get<number | null>(cfg, "projection_class_embeddings_input_dim", null);
  if (cet === null && numClass !== null) {
    if (!isPosInt(numClass)) throw new Error("UNet config: num_class_embeds must be a positive integer");
    classEmbedding = { type: "embedding", count: numClass };
  } else if (cet === "timestep") {
    classEmbedding = { type: "timestep", inputDim: timestepInputDim };
  } else if (cet === "projection") {
    if (!isPosInt(pcei)) throw new Error("UNet config: class_embed_type \"projection\" needs projection_class_embeddings_input_dim");
    classEmbedding = { type: "projection", inputDim: pcei };
  }
  let additionEmbedding: UNetStructure["additionEmbedding"] = null;
  if (get<string | null>(cfg, "addition_embed_type", null) === "text_time") {
    if (!isPosInt(pcei)) throw new Error("UNet config: addition_embed_type \"text_time\" needs projection_class_embeddings_input_dim");
    additionEmbedding = { inputDim: pcei };
  }

  const tf = (i: number, channels: number, layers: number, only: boolean): UNetTransformerSpec => ({
    heads: heads[i], headDim: Math.floor(channels / heads[i]), layers, crossAttentionDim: cad[i], onlyCrossAttention: only,
  });

  const down: UNetDownBlockSpec[] = [];
  let out = boc[0];
  for (let i = 0; i < n; i++) {
    const inCh = out;
    out = boc[i];
    const type = downTypes[i] as UNetDownBlockType;
    down.push({ type, inChannels: inCh, outChannels: out, layers: lpb[i], downsample: i !== n - 1,
      attention: type === "CrossAttnDownBlock2D" ? tf(i, out, tlpb[i], onlyCross[i]) : null });
  }

  const midType = get<UNetMidBlockType>(cfg, "mid_block_type", "UNetMidBlock2DCrossAttn");
  const last = n - 1;
  // UNetMidBlock2DCrossAttn takes no only_cross_attention (mid_block_only_cross_attention is read
  // only by the SimpleCrossAttn mid block, which is not supported).
  const mid: UNetStructure["mid"] = midType === null ? null : {
    type: midType, channels: boc[last],
    attention: midType === "UNetMidBlock2DCrossAttn" ? tf(last, boc[last], tlpb[last], false) : null,
  };
  const rboc = [...boc].reverse(), rheads = [...heads].reverse(), rlpb = [...lpb].reverse(), rcad = [...cad].reverse();
  const rOnly = [...onlyCross].reverse();
  const up: UNetUpBlockSpec[] = [];
  out = rboc[0];
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = rboc[i];
    const inCh = rboc[Math.min(i + 1, n - 1)];
    const type = upTypes[i] as UNetUpBlockType;
    up.push({
      type, inChannels: inCh, outChannels: out, prevOutputChannels: prev, layers: rlpb[i] + 1, upsample: i !== n - 1,
      attention: type === "CrossAttnUpBlock2D"
        ? { heads: rheads[i], headDim: Math.floor(out / rheads[i]), layers: rtlpb[i], crossAttentionDim: rcad[i], onlyCrossAttention: rOnly[i] }
        : null,
    });
  }

  const groups = get<number | null>(cfg, "norm_num_groups", 32);
  if (!isPosInt(groups)) throw new Error("UNet config: norm_num_groups must be a positive integer (null, no output norm, is not supported)");
  const tcpd = get<number | null>(cfg, "time_cond_proj_dim", null);
  if (tcpd !== null && !isPosInt(tcpd)) throw new Error("UNet config: time_cond_proj_dim must be a positive integer or null");
  const kin = get<number>(cfg, "conv_in_kernel", 3), kout = get<number>(cfg, "conv_out_kernel", 3);
  if (!isPosInt(kin) || !isPosInt(kout)) throw new Error("UNet config: conv_in_kernel/conv_out_kernel must be positive integers");
  const inChannels = get<number>(cfg, "in_channels", 4), outChannels = get<number>(cfg, "out_channels", 4);
  if (!isPosInt(inChannels) || !isPosInt(outChannels)) throw new Error("UNet config: in_channels/out_channels must be positive integers");
  if (!isPosInt(timeEmbedDim)) throw new Error("UNet config: time_embedding_dim must be a positive integer");
  if (!isString(get<unknown>(cfg, "act_fn", "silu"))) throw new Error("UNet config: act_fn must be a string");

  return {
    inChannels, outChannels, blockOutChannels: boc, timeEmbedDim, timestepInputDim, timeCondProjDim: tcpd,
    resnetTembDim: concat ? timeEmbedDim * 2 : timeEmbedDim,
    resnetTimeScaleShift: get(cfg, "resnet_time_scale_shift", "default"),
    convInKernel: kin, convOutKernel: kout, normNumGroups: groups, useLinearProjection: useLinear,
    classEmbedding, additionEmbedding, down, mid, up,
  };
}

// ---- parameter lists

class Shapes {
  readonly map: ParamShapes = new Map();
  put(key: string, shape: number[]): void {
    if (this.map.has(key)) throw new Error(`param-shapes: duplicate key ${key}`);
    this.map.set(key, shape);
  }
  linear(p: string, inF: number, outF: number, bias = true): void {
    this.put(`${p}.weight`, [outF, inF]);
    if (bias) this.put(`${p}.bias`, [outF]);
  }
  conv(p: string, inC: number, outC: number, k: number): void {
    this.put(`${p}.weight`, [outC, inC, k, k]);
    this.put(`${p}.bias`, [outC]);
  }
  norm(p: string, c: number): void {
    this.put(`${p}.weight`, [c]);
    this.put(`${p}.bias`, [c]);
  }
  /** diffusers ResnetBlock2D. */
  resnet(p: string, inC: number, outC: number, temb: number | null, scaleShift = false): void {
    this.norm(`${p}.norm1`, inC);
    this.conv(`${p}.conv1`, inC, outC, 3);
    if (temb !== null) this.linear(`${p}.time_emb_proj`, temb, scaleShift ? 2 * outC : outC);
    this.norm(`${p}.norm2`, outC);
    this.conv(`${p}.conv2`, outC, outC, 3);
    if (inC !== outC) this.conv(`${p}.conv_shortcut`, inC, outC, 1);
  }
  /** diffusers TimestepEmbedding (linear_1, optional cond_proj, linear_2). */
  timestepEmbedding(p: string, inDim: number, dim: number, condProjDim: number | null = null): void {
    this.linear(`${p}.linear_1`, inDim, dim);
    if (condProjDim !== null) this.linear(`${p}.cond_proj`, condProjDim, inDim, false);
    this.linear(`${p}.linear_2`, dim, dim);
  }
  /** diffusers Transformer2DModel (continuous input) with BasicTransformerBlocks. */
  transformer2d(p: string, channels: number, t: UNetTransformerSpec, linearProj: boolean): void {
    const inner = t.heads * t.headDim;
    this.norm(`${p}.norm`, channels);
    if (linearProj) this.linear(`${p}.proj_in`, channels, inner);
    else this.conv(`${p}.proj_in`, channels, inner, 1);
    for (let b = 0; b < t.layers; b++) {
      const q = `${p}.transformer_blocks.${b}`;
      this.norm(`${q}.norm1`, inner);
      const selfKv = t.onlyCrossAttention ? t.crossAttentionDim : inner;
      this.linear(`${q}.attn1.to_q`, inner, inner, false);
      this.linear(`${q}.attn1.to_k`, selfKv, inner, false);
      this.linear(`${q}.attn1.to_v`, selfKv, inner, false);
      this.linear(`${q}.attn1.to_out.0`, inner, inner);
      this.norm(`${q}.norm2`, inner);
      this.linear(`${q}.attn2.to_q`, inner, inner, false);
      this.linear(`${q}.attn2.to_k`, t.crossAttentionDim, inner, false);
      this.linear(`${q}.attn2.to_v`, t.crossAttentionDim, inner, false);
      this.linear(`${q}.attn2.to_out.0`, inner, inner);
      this.norm(`${q}.norm3`, inner);
      this.linear(`${q}.ff.net.0.proj`, inner, inner * 8);  // GEGLU: 2 x (4 x inner)
      this.linear(`${q}.ff.net.2`, inner * 4, inner);
    }
    if (linearProj) this.linear(`${p}.proj_out`, inner, channels);
    else this.conv(`${p}.proj_out`, inner, channels, 1);
  }
  /** The VAE mid-block attention (diffusers Attention with group_norm, one head). */
  vaeAttention(p: string, c: number): void {
    this.norm(`${p}.group_norm`, c);
    this.linear(`${p}.to_q`, c, c);
    this.linear(`${p}.to_k`, c, c);
    this.linear(`${p}.to_v`, c, c);
    this.linear(`${p}.to_out.0`, c, c);
  }
}

/** Every parameter of a diffusers UNet2DConditionModel built from `config`, in module order. */
export function unetParamShapes(config: Json): ParamShapes {
  const s = unetStructure(config);
  const o = new Shapes();
  const b0 = s.blockOutChannels[0];
  const temb = s.resnetTembDim, ss = s.resnetTimeScaleShift === "scale_shift";
  o.conv("conv_in", s.inChannels, b0, s.convInKernel);
  o.timestepEmbedding("time_embedding", s.timestepInputDim, s.timeEmbedDim, s.timeCondProjDim);
  if (s.classEmbedding?.type === "embedding") o.put("class_embedding.weight", [s.classEmbedding.count, s.timeEmbedDim]);
  else if (s.classEmbedding) o.timestepEmbedding("class_embedding", s.classEmbedding.inputDim, s.timeEmbedDim);
  if (s.additionEmbedding) o.timestepEmbedding("add_embedding", s.additionEmbedding.inputDim, s.timeEmbedDim);
  s.down.forEach((d, i) => {
    for (let j = 0; j < d.layers; j++) {
      o.resnet(`down_blocks.${i}.resnets.${j}`, j === 0 ? d.inChannels : d.outChannels, d.outChannels, temb, ss);
    }
    if (d.attention) for (let j = 0; j < d.layers; j++) o.transformer2d(`down_blocks.${i}.attentions.${j}`, d.outChannels, d.attention, s.useLinearProjection);
    if (d.downsample) o.conv(`down_blocks.${i}.downsamplers.0.conv`, d.outChannels, d.outChannels, 3);
  });
  s.up.forEach((u, i) => {
    for (let j = 0; j < u.layers; j++) {
      const skip = j === u.layers - 1 ? u.inChannels : u.outChannels;
      const resIn = j === 0 ? u.prevOutputChannels : u.outChannels;
      o.resnet(`up_blocks.${i}.resnets.${j}`, resIn + skip, u.outChannels, temb, ss);
    }
    if (u.attention) for (let j = 0; j < u.layers; j++) o.transformer2d(`up_blocks.${i}.attentions.${j}`, u.outChannels, u.attention, s.useLinearProjection);
    if (u.upsample) o.conv(`up_blocks.${i}.upsamplers.0.conv`, u.outChannels, u.outChannels, 3);
  });
  if (s.mid) {
    const c = s.mid.channels;
    if (s.mid.attention) o.transformer2d("mid_block.attentions.0", c, s.mid.attention, s.useLinearProjection);
    o.resnet("mid_block.resnets.0", c, c, temb, ss);
    if (s.mid.attention) o.resnet("mid_block.resnets.1", c, c, temb, ss);
  }
  o.norm("conv_norm_out", b0);
  o.conv("conv_out", b0, s.outChannels, s.convOutKernel);
  return o.map;
}

// ---- VAE

export interface VAEStructure {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  midBlockAttention: boolean;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
}

export function vaeStructure(cfg: Json): VAEStructure {
  const W = "VAE";
  const cls = cfg["_class_name"];
  if (cls !== undefined && cls !== "AutoencoderKL") throw new Error(`VAE config: _class_name must be AutoencoderKL, got ${JSON.stringify(cls)}`);
  const boc = intList(cfg, "block_out_channels", W);
  const n = boc.length;
  const down = get<unknown>(cfg, "down_block_types", ["DownEncoderBlock2D"]), up = get<unknown>(cfg, "up_block_types", ["UpDecoderBlock2D"]);
  if (!Array.isArray(down) || down.length !== n || !down.every((t) => t === "DownEncoderBlock2D"))
    throw new Error(`VAE config: down_block_types must be ${n} x "DownEncoderBlock2D", got ${JSON.stringify(down)}`);
  if (!Array.isArray(up) || up.length !== n || !up.every((t) => t === "UpDecoderBlock2D"))
    throw new Error(`VAE config: up_block_types must be ${n} x "UpDecoderBlock2D", got ${JSON.stringify(up)}`);
  const lpb = get<number>(cfg, "layers_per_block", 1);
  const groups = get<number>(cfg, "norm_num_groups", 32);
  const latent = get<number>(cfg, "latent_channels", 4);
  const inC = get<number>(cfg, "in_channels", 3), outC = get<number>(cfg, "out_channels", 3);
  for (const [k, v] of Object.entries({ layers_per_block: lpb, norm_num_groups: groups, latent_channels: latent, in_channels: inC, out_channels: outC }))
    if (!isPosInt(v)) throw new Error(`VAE config: ${k} must be a positive integer, got ${JSON.stringify(v)}`);
  const bools = (k: string) => {
    const v = get<boolean>(cfg, k, true);
    if (!isBool(v)) throw new Error(`VAE config: ${k} must be a boolean`);
    return v;
  };
  return { inChannels: inC, outChannels: outC, latentChannels: latent, blockOutChannels: boc, layersPerBlock: lpb, normNumGroups: groups,
    midBlockAttention: bools("mid_block_add_attention"), useQuantConv: bools("use_quant_conv"), usePostQuantConv: bools("use_post_quant_conv") };
}

/** Every parameter of a diffusers AutoencoderKL built from `config`. */
export function vaeParamShapes(config: Json): ParamShapes {
  const s = vaeStructure(config);
  const o = new Shapes();
  const boc = s.blockOutChannels, n = boc.length, top = boc[n - 1];
  const mid = (p: string) => {
    o.resnet(`${p}.mid_block.resnets.0`, top, top, null);
    if (s.midBlockAttention) o.vaeAttention(`${p}.mid_block.attentions.0`, top);
    o.resnet(`${p}.mid_block.resnets.1`, top, top, null);
  };
  // encoder
  o.conv("encoder.conv_in", s.inChannels, boc[0], 3);
  let out = boc[0];
  for (let i = 0; i < n; i++) {
    const inC = out;
    out = boc[i];
    for (let j = 0; j < s.layersPerBlock; j++) o.resnet(`encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? inC : out, out, null);
    if (i !== n - 1) o.conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  mid("encoder");
  o.norm("encoder.conv_norm_out", top);
  o.conv("encoder.conv_out", top, 2 * s.latentChannels, 3);
  // decoder
  o.conv("decoder.conv_in", s.latentChannels, top, 3);
  mid("decoder");
  const r = [...boc].reverse();
  out = r[0];
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = r[i];
    for (let j = 0; j < s.layersPerBlock + 1; j++) o.resnet(`decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? prev : out, out, null);
    if (i !== n - 1) o.conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  o.norm("decoder.conv_norm_out", boc[0]);
  o.conv("decoder.conv_out", boc[0], s.outChannels, 3);
  if (s.useQuantConv) o.conv("quant_conv", 2 * s.latentChannels, 2 * s.latentChannels, 1);
  if (s.usePostQuantConv) o.conv("post_quant_conv", s.latentChannels, s.latentChannels, 1);
  return o.map;
}

/** Every parameter of a transformers CLIP text model built from `config` (from the model's own specs). */
export function clipTextParamShapes(config: Json, opts: CLIPTextConfigOptions = {}): ParamShapes {
  const m = CLIPTextModel.fromConfig(config, opts);
  return new Map(m.namedParameterSpecs().map(([k, spec]) => [k, [...spec.shape]]));
}
