// UNet2DConditionModel, built from a diffusers config.json (SD 1.x / 2.x). Activations are NHWC
// inside; forward() takes and returns diffusers' NCHW.
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { Conv2d, GroupNorm, Linear, Module } from "../nn";
import { emitNhwc, emitPlain, scopeHook, type ActivationHook } from "../nn/attention";
import {
  CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
  type UNetAttentionSettings, type UNetBlockCommon,
} from "./blocks/unet-blocks";
import { UnsupportedConfigError } from "./blocks/config";
import { releaseUNetGraphs } from "./unet-graph";

export { UnsupportedConfigError };

/** config.json of a diffusers UNet2DConditionModel (snake_case as in the file; all optional). */
export interface UNet2DConditionConfigJson {
  sample_size?: number | number[] | null;
  in_channels?: number;
  out_channels?: number;
  center_input_sample?: boolean;
  flip_sin_to_cos?: boolean;
  freq_shift?: number;
  down_block_types?: string[];
  mid_block_type?: string | null;
  up_block_types?: string[];
  only_cross_attention?: boolean | boolean[];
  block_out_channels?: number[];
  layers_per_block?: number | number[];
  downsample_padding?: number;
  mid_block_scale_factor?: number;
  dropout?: number;
  act_fn?: string;
  norm_num_groups?: number | null;
  norm_eps?: number;
  cross_attention_dim?: number | number[];
  transformer_layers_per_block?: number | number[] | number[][];
  reverse_transformer_layers_per_block?: number[][] | null;
  encoder_hid_dim?: number | null;
  encoder_hid_dim_type?: string | null;
  attention_head_dim?: number | number[];
  num_attention_heads?: number | number[] | null;
  dual_cross_attention?: boolean;
  use_linear_projection?: boolean;
  class_embed_type?: string | null;
  addition_embed_type?: string | null;
  addition_time_embed_dim?: number | null;
  num_class_embeds?: number | null;
  upcast_attention?: boolean;
  resnet_time_scale_shift?: string;
  resnet_skip_time_act?: boolean;
  resnet_out_scale_factor?: number;
  time_embedding_type?: string;
  time_embedding_dim?: number | null;
  time_embedding_act_fn?: string | null;
  timestep_post_act?: string | null;
  time_cond_proj_dim?: number | null;
  conv_in_kernel?: number;
  conv_out_kernel?: number;
  projection_class_embeddings_input_dim?: number | null;
  attention_type?: string;
  class_embeddings_concat?: boolean;
  mid_block_only_cross_attention?: boolean | null;
  cross_attention_norm?: string | null;
  addition_embed_type_num_heads?: number;
  [key: string]: unknown;
}

/** The config with diffusers 0.27.2's defaults applied and every per-block list expanded. */
export interface UNet2DConditionConfig {
  sampleSize: number | number[] | null;
  inChannels: number;
  outChannels: number;
  centerInputSample: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  downBlockTypes: string[];
  midBlockType: string | null;
  upBlockTypes: string[];
  blockOutChannels: number[];
  layersPerBlock: number[];
  downsamplePadding: number;
  midBlockScaleFactor: number;
  normNumGroups: number;
  normEps: number;
  crossAttentionDim: number[];
  transformerLayersPerBlock: number[];
  /** Attention heads per down level (diffusers' attention_head_dim when num_attention_heads is null). */
  numAttentionHeads: number[];
  useLinearProjection: boolean;
  upcastAttention: boolean;
  resnetOutScaleFactor: number;
  timeEmbedDim: number;
  convInKernel: number;
  convOutKernel: number;
  /** SDXL's "text_time" conditioning: sinusoid width per id and the add_embedding input width; null for SD 1.x/2.x. */
  addition: { timeEmbedDim: number; inputDim: number } | null;
}

const DOWN_TYPES = ["CrossAttnDownBlock2D", "DownBlock2D"];
const UP_TYPES = ["CrossAttnUpBlock2D", "UpBlock2D"];
const MID_TYPES = ["UNetMidBlock2DCrossAttn"];

function perBlock<T>(model: string, key: string, value: T | T[], n: number): T[] {
  if (!Array.isArray(value)) return Array.from({ length: n }, () => value);
  if (value.length !== n) throw new RangeError(`${model}: config "${key}" has ${value.length} entries, expected one per down block (${n})`);
  return [...value];
}

function positiveInt(model: string, key: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw new RangeError(`${model}: config "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

/** Applies diffusers 0.27.2's defaults and rejects what would change the math unsupported. */
export function resolveUNetConfig(json: UNet2DConditionConfigJson): UNet2DConditionConfig {
  const M = "UNet2DConditionModel";
  const c = json;
  const unsupported = (key: string, supported: string) => { throw new UnsupportedConfigError(M, key, c[key], supported); };
  const mustBe = (key: string, dflt: unknown, allowed: unknown[] = [dflt]) => {
    const v = c[key] === undefined ? dflt : c[key];
    if (!allowed.some((a) => a === v)) unsupported(key, allowed.map((a) => JSON.stringify(a)).join(", "));
  };
  // settings outside SD 1.x / 2.x / XL: reject rather than silently compute something else
  mustBe("addition_embed_type", null, [null, "text_time"]);
  mustBe("class_embed_type", null);
  mustBe("num_class_embeds", null);
  mustBe("encoder_hid_dim", null);
  mustBe("encoder_hid_dim_type", null);
  mustBe("time_embedding_type", "positional");
  mustBe("time_embedding_act_fn", null);
  mustBe("timestep_post_act", null);
  mustBe("time_cond_proj_dim", null);
  mustBe("act_fn", "silu");
  mustBe("dual_cross_attention", false);
  mustBe("resnet_time_scale_shift", "default");
  mustBe("resnet_skip_time_act", false);
  mustBe("attention_type", "default");
  mustBe("cross_attention_norm", null);
  mustBe("class_embeddings_concat", false);
  mustBe("reverse_transformer_layers_per_block", null);
  mustBe("mid_block_only_cross_attention", null, [null, false]);
  if (c.num_attention_heads != null)
    unsupported("num_attention_heads", "null (diffusers 0.27.2 rejects it too; attention_head_dim holds the head counts)");
  const only = c.only_cross_attention ?? false;
  if (only === true || (Array.isArray(only) && only.some((o) => o))) unsupported("only_cross_attention", "false");
  if (c.norm_num_groups === null) unsupported("norm_num_groups", "a positive integer");

  const downBlockTypes = c.down_block_types ?? ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
  const upBlockTypes = c.up_block_types ?? ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
  const midBlockType = c.mid_block_type === undefined ? "UNetMidBlock2DCrossAttn" : c.mid_block_type;
  downBlockTypes.forEach((t) => { if (!DOWN_TYPES.includes(t)) unsupported("down_block_types", DOWN_TYPES.join(", ")); });
  upBlockTypes.forEach((t) => { if (!UP_TYPES.includes(t)) unsupported("up_block_types", UP_TYPES.join(", ")); });
  if (midBlockType !== null && !MID_TYPES.includes(midBlockType)) unsupported("mid_block_type", [...MID_TYPES, "null"].join(", "));

  const blockOutChannels = c.block_out_channels ?? [320, 640, 1280, 1280];
  const n = downBlockTypes.length;
  if (upBlockTypes.length !== n) throw new RangeError(`${M}: down_block_types (${n}) and up_block_types (${upBlockTypes.length}) differ in length`);
  if (blockOutChannels.length !== n) throw new RangeError(`${M}: block_out_channels (${blockOutChannels.length}) must have one entry per down block (${n})`);
  blockOutChannels.forEach((ch) => positiveInt(M, "block_out_channels", ch));

  const tlpb = c.transformer_layers_per_block ?? 1;
  if (Array.isArray(tlpb) && tlpb.some((x) => Array.isArray(x))) unsupported("transformer_layers_per_block", "an integer or a list of integers");
  const normNumGroups = positiveInt(M, "norm_num_groups", c.norm_num_groups ?? 32);
  const layersPerBlock = perBlock(M, "layers_per_block", c.layers_per_block ?? 2, n).map((v) => positiveInt(M, "layers_per_block", v));
  const numAttentionHeads = perBlock(M, "attention_head_dim", c.attention_head_dim ?? 8, n).map((v) => positiveInt(M, "attention_head_dim", v));
  const crossAttentionDim = perBlock(M, "cross_attention_dim", c.cross_attention_dim ?? 1280, n).map((v) => positiveInt(M, "cross_attention_dim", v));
  const transformerLayersPerBlock = perBlock(M, "transformer_layers_per_block", tlpb as number | number[], n)
    .map((v) => positiveInt(M, "transformer_layers_per_block", v));
  let addition: UNet2DConditionConfig["addition"] = null;
  if (c.addition_embed_type === "text_time") {
    // SDXL: pooled text embedding + sinusoids of the six size/crop ids -> an MLP added to the time embedding
    if (typeof c.addition_time_embed_dim !== "number" || typeof c.projection_class_embeddings_input_dim !== "number")
      throw new RangeError(`${M}: addition_embed_type "text_time" needs addition_time_embed_dim and projection_class_embeddings_input_dim`);
    addition = {
      timeEmbedDim: positiveInt(M, "addition_time_embed_dim", c.addition_time_embed_dim),
      inputDim: positiveInt(M, "projection_class_embeddings_input_dim", c.projection_class_embeddings_input_dim),
    };
  }
  const convInKernel = c.conv_in_kernel ?? 3, convOutKernel = c.conv_out_kernel ?? 3;
  if (convInKernel % 2 !== 1) unsupported("conv_in_kernel", "an odd integer");
  if (convOutKernel % 2 !== 1) unsupported("conv_out_kernel", "an odd integer");

  return {
    sampleSize: c.sample_size ?? null,
    inChannels: positiveInt(M, "in_channels", c.in_channels ?? 4),
    outChannels: positiveInt(M, "out_channels", c.out_channels ?? 4),
    centerInputSample: c.center_input_sample ?? false,
    flipSinToCos: c.flip_sin_to_cos ?? true,
    freqShift: c.freq_shift ?? 0,
    downBlockTypes, midBlockType, upBlockTypes, blockOutChannels, layersPerBlock,
    downsamplePadding: c.downsample_padding ?? 1,
    midBlockScaleFactor: c.mid_block_scale_factor ?? 1,
    normNumGroups,
    normEps: c.norm_eps ?? 1e-5,
    crossAttentionDim, transformerLayersPerBlock, numAttentionHeads,
    useLinearProjection: c.use_linear_projection ?? false,
    upcastAttention: c.upcast_attention ?? false,
    resnetOutScaleFactor: c.resnet_out_scale_factor ?? 1,
    timeEmbedDim: c.time_embedding_dim ?? blockOutChannels[0] * 4,
    convInKernel, convOutKernel, addition,
  };
}

/** diffusers `TimestepEmbedding`: linear_1, SiLU, linear_2. */
class TimestepEmbedding extends Module {
  readonly linear1: Linear;
  readonly linear2: Linear;
  constructor(inDim: number, dim: number) {
    super();
    this.linear1 = this.child("linear_1", new Linear(inDim, dim));
    this.linear2 = this.child("linear_2", new Linear(dim, dim));
  }
  forward(x: Tensor): Tensor {
    return tidy(() => this.linear2.forward(ops.silu(this.linear1.forward(x))));
  }
}

export interface UNetForwardOptions {
  /** Receives named activations as diffusers' forward hooks see them (see ActivationHook). */
  hooks?: ActivationHook;
  /** SDXL (addition_embed_type "text_time"): diffusers' added_cond_kwargs. */
  addedCond?: AddedCond;
  /** ControlNet's output (ControlNetModel.forward): added to every skip and to the mid block's output. */
  controlResiduals?: ControlResiduals;
}

/** What a ControlNet hands the U-Net: one tensor per skip (NHWC, as the U-Net's own) and one for the mid block. */
export interface ControlResiduals {
  down: Tensor[];
  mid: Tensor;
}

/**
 * SDXL's extra conditioning: the pooled text embedding [B, P] and the size/crop ids [B, n]: six for
 * the base model, five for the refiner (its last id is the aesthetic score).
 */
export interface AddedCond {
  textEmbeds: Tensor;
  timeIds: Tensor;
}

/**
 * The conditional U-Net. Hook names (as in the reference data): time_proj, time_embedding,
 * conv_in, down_blocks.i.0 (hidden output), down_blocks.i.1.j (j-th skip), down_blocks.i.resnets.j,
 * down_blocks.i.attentions.j(.norm/.proj_in/.transformer_blocks.k(.norm1...)/.proj_out),
 * down_blocks.i.downsamplers.0, mid_block(.resnets.j/.attentions.j...), up_blocks.i(...),
 * conv_norm_out (before SiLU), conv_act.
 */
/**
 * The half of the U-Net that ControlNet copies (diffusers' names, registered in the U-Net's
 * order): conv_in, the time embedding (and SDXL's add_embedding), the down blocks and the mid
 * block, with the time-embedding and down-path steps both forwards share.
 */
export abstract class UNetEncoderBase extends Module {
  readonly config: UNet2DConditionConfig;
  readonly convIn: Conv2d;
  readonly timeEmbedding: TimestepEmbedding;
  /** SDXL's add_embedding (text_time); null for SD 1.x/2.x. */
  readonly addEmbedding: TimestepEmbedding | null;
  readonly downBlocks: DownBlock2D[] = [];
  readonly midBlock: UNetMidBlock2DCrossAttn | null;
  /** The config.json this model was built from (as given). */
  readonly configJson: Readonly<UNet2DConditionConfigJson>;
  protected readonly blockCommon: UNetBlockCommon;

  constructor(configJson: UNet2DConditionConfigJson) {
    super();
    const cfg = this.config = resolveUNetConfig(configJson);
    this.configJson = Object.freeze({ ...configJson });
    const boc = cfg.blockOutChannels, n = boc.length;
    const common: UNetBlockCommon = this.blockCommon = { tembChannels: cfg.timeEmbedDim, groups: cfg.normNumGroups, eps: cfg.normEps, outputScaleFactor: cfg.resnetOutScaleFactor };

    this.convIn = this.child("conv_in", new Conv2d(cfg.inChannels, boc[0], { kernel: cfg.convInKernel, padding: (cfg.convInKernel - 1) / 2 }));
    this.addEmbedding = cfg.addition ? this.child("add_embedding", new TimestepEmbedding(cfg.addition.inputDim, cfg.timeEmbedDim)) : null;
    this.timeEmbedding = this.child("time_embedding", new TimestepEmbedding(boc[0], cfg.timeEmbedDim));

    let out = boc[0];
    cfg.downBlockTypes.forEach((type, i) => {
      const cin = out;
      out = boc[i];
      const blockCfg = { inChannels: cin, outChannels: out, numLayers: cfg.layersPerBlock[i], addDownsample: i < n - 1, downsamplePadding: cfg.downsamplePadding, common };
      this.downBlocks.push(this.child(`down_blocks.${i}`, type === "CrossAttnDownBlock2D"
        ? new CrossAttnDownBlock2D({ ...blockCfg, attention: this.attentionAt(i) })
        : new DownBlock2D(blockCfg)));
    });

    this.midBlock = cfg.midBlockType === null ? null : this.child("mid_block", new UNetMidBlock2DCrossAttn({
      channels: boc[n - 1], common: { ...common, outputScaleFactor: cfg.midBlockScaleFactor },
      attention: { ...this.attentionAt(n - 1), transformerLayers: [cfg.transformerLayersPerBlock[n - 1]] },
    }));
  }

  /** The attention settings of down level `level`. */
  protected attentionAt(level: number): UNetAttentionSettings {
    const cfg = this.config;
    return {
      heads: cfg.numAttentionHeads[level], crossAttentionDim: cfg.crossAttentionDim[level],
      transformerLayers: Array(cfg.layersPerBlock[level]).fill(cfg.transformerLayersPerBlock[level]),
      useLinearProjection: cfg.useLinearProjection, upcastAttention: cfg.upcastAttention,
    };
  }

  /** Checks the forward's inputs; the batch size. */
  protected checkInputs(what: string, sample: Tensor, encoderHiddenStates: Tensor): number {
    const cfg = this.config;
    if (sample.ndim !== 4 || sample.shape[1] !== cfg.inChannels)
      throw new RangeError(`${what}.forward: sample must be [B, ${cfg.inChannels}, H, W], got [${sample.shape.join(",")}]`);
    const B = sample.shape[0];
    if (encoderHiddenStates.ndim !== 3 || encoderHiddenStates.shape[0] !== B)
      throw new RangeError(`${what}.forward: encoderHiddenStates must be [${B}, M, D], got [${encoderHiddenStates.shape.join(",")}]`);
    return B;
  }

  /** silu(emb): the sinusoid of the timestep (float32) through the MLP, plus SDXL's text_time term. */
  protected embedding(sample: Tensor, timestep: number | Tensor, B: number, added: AddedCond | undefined, hook?: ActivationHook): Tensor {
    const cfg = this.config;
    const t = timestepVector(timestep, B, sample.device);
    let tProj = ops.timestepEmbedding(t, cfg.blockOutChannels[0], { flipSinToCos: cfg.flipSinToCos, downscaleFreqShift: cfg.freqShift });
    if (tProj.dtype !== sample.dtype) tProj = tProj.to(sample.device, sample.dtype);
    emitPlain(hook, "time_proj", tProj);
    let emb = this.timeEmbedding.forward(tProj);
    emitPlain(hook, "time_embedding", emb);
    if (this.addEmbedding) emb = this.addTextTime(emb, B, added, sample, hook);
    return ops.silu(emb);
  }

  /** The down blocks from h (conv_in's output, a skip itself): the last hidden state and every skip, in order. */
  protected downPath(h: Tensor, embAct: Tensor, ctx: Tensor, hook?: ActivationHook): { hidden: Tensor; skips: Tensor[] } {
    const skips: Tensor[] = [h];
    this.downBlocks.forEach((block, i) => {
      const r = block.forward(h, embAct, ctx, scopeHook(hook, `down_blocks.${i}.`));
      h = r.hidden;
      skips.push(...r.skips);
      emitNhwc(hook, `down_blocks.${i}.0`, h);
      r.skips.forEach((s, j) => emitNhwc(hook, `down_blocks.${i}.1.${j}`, s));
    });
    return { hidden: h, skips };
  }

  /**
   * SDXL's text_time conditioning: emb + add_embedding(cat(text_embeds, sinusoids of the six ids)),
   * each id's sinusoid in float32 as the timestep's (diffusers' add_time_proj), then the model dtype.
   */
  protected addTextTime(emb: Tensor, B: number, added: AddedCond | undefined, sample: Tensor, hook?: ActivationHook): Tensor {
    const a = this.config.addition!;
    if (!added) throw new TypeError("UNet2DConditionModel.forward: this U-Net (addition_embed_type \"text_time\", SDXL) needs addedCond { textEmbeds, timeIds }");
    const { textEmbeds, timeIds } = added;
    if (timeIds.ndim !== 2 || timeIds.shape[0] !== B || timeIds.shape[1] < 1)
      throw new RangeError(`UNet2DConditionModel.forward: addedCond.timeIds must be [${B}, n], got [${timeIds.shape.join(",")}]`);
    const n = timeIds.shape[1], textDim = a.inputDim - n * a.timeEmbedDim;
    if (textEmbeds.ndim !== 2 || textEmbeds.shape[0] !== B || textEmbeds.shape[1] !== textDim)
      throw new RangeError(`UNet2DConditionModel.forward: addedCond.textEmbeds must be [${B}, ${textDim}] (projection_class_embeddings_input_dim ${a.inputDim} - ${n} ids x ${a.timeEmbedDim}), got [${textEmbeds.shape.join(",")}]`);
    const cfg = this.config;
    const ids = timeIds.dtype === "float32" && timeIds.device === sample.device ? timeIds : timeIds.to(sample.device, "float32");
    const proj = ops.timestepEmbedding(ids.reshape([B * n]), a.timeEmbedDim, { flipSinToCos: cfg.flipSinToCos, downscaleFreqShift: cfg.freqShift });
    emitPlain(hook, "add_time_proj", proj);
    const text = textEmbeds.dtype === "float32" && textEmbeds.device === sample.device ? textEmbeds : textEmbeds.to(sample.device, "float32");
    let addIn = ops.concat([text, proj.reshape([B, n * a.timeEmbedDim])], 1);
    if (addIn.dtype !== sample.dtype) addIn = addIn.to(sample.device, sample.dtype);
    const aug = this.addEmbedding!.forward(addIn);
    emitPlain(hook, "add_embedding", aug);
    const sum = ops.add(emb, aug);
    emitPlain(hook, "emb", sum);
    return sum;
  }
}

export class UNet2DConditionModel extends UNetEncoderBase {
  readonly upBlocks: UpBlock2D[] = [];
  readonly convNormOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(configJson: UNet2DConditionConfigJson) {
    super(configJson);
    const cfg = this.config, common = this.blockCommon;
    const boc = cfg.blockOutChannels, n = boc.length;

    // the up path reads every per-level list reversed
    const rev = <T>(xs: T[]): T[] => [...xs].reverse();
    const rboc = rev(boc), rLayers = rev(cfg.layersPerBlock), rHeads = rev(cfg.numAttentionHeads);
    const rCross = rev(cfg.crossAttentionDim), rTlpb = rev(cfg.transformerLayersPerBlock);
    let out = rboc[0];
    cfg.upBlockTypes.forEach((type, i) => {
      const prev = out;
      out = rboc[i];
      const cin = rboc[Math.min(i + 1, n - 1)];
      const numLayers = rLayers[i] + 1;
      const blockCfg = { inChannels: cin, prevOutputChannels: prev, outChannels: out, numLayers, addUpsample: i < n - 1, common };
      this.upBlocks.push(this.child(`up_blocks.${i}`, type === "CrossAttnUpBlock2D"
        ? new CrossAttnUpBlock2D({ ...blockCfg, attention: {
          heads: rHeads[i], crossAttentionDim: rCross[i], transformerLayers: Array(numLayers).fill(rTlpb[i]),
          useLinearProjection: cfg.useLinearProjection, upcastAttention: cfg.upcastAttention } })
        : new UpBlock2D(blockCfg)));
    });

    this.convNormOut = this.child("conv_norm_out", new GroupNorm(cfg.normNumGroups, boc[0], cfg.normEps));
    this.convOut = this.child("conv_out", new Conv2d(boc[0], cfg.outChannels, { kernel: cfg.convOutKernel, padding: (cfg.convOutKernel - 1) / 2 }));
  }

  // Captured step graphs (./unet-graph.ts) read the parameters' memory: replacing or freeing
  // the parameters releases them first.
  override loadStateDict(...args: Parameters<Module["loadStateDict"]>): void {
    releaseUNetGraphs(this);
    super.loadStateDict(...args);
  }
  override to(device: string, dtype?: Parameters<Module["to"]>[1]): this {
    releaseUNetGraphs(this);
    return super.to(device, dtype);
  }
  override replaceParameter(name: string, t: Tensor): Tensor {
    releaseUNetGraphs(this);
    return super.replaceParameter(name, t);
  }
  override withParametersAs<R>(dtype: Parameters<Module["to"]>[1] & string, fn: () => R): R {
    releaseUNetGraphs(this);
    return super.withParametersAs(dtype, fn);
  }
  override dispose(): void {
    releaseUNetGraphs(this);
    super.dispose();
  }

  /**
   * sample [B, inChannels, H, W] (NCHW), timestep a number, or a tensor of 1 or B values (any
   * numeric dtype; used as float32, as diffusers does), encoderHiddenStates [B, M, crossAttentionDim]
   * -> [B, outChannels, H, W] (NCHW), the predicted noise (or v / x0, per the scheduler's config).
   */
  forward(sample: Tensor, timestep: number | Tensor, encoderHiddenStates: Tensor, opts: UNetForwardOptions = {}): Tensor {
    const cfg = this.config;
    const B = this.checkInputs("UNet2DConditionModel", sample, encoderHiddenStates);
    const hook = opts.hooks;
    const control = opts.controlResiduals;
    return tidy(() => {
      const ctx = encoderHiddenStates.dtype === sample.dtype && encoderHiddenStates.device === sample.device ? encoderHiddenStates : encoderHiddenStates.to(sample.device, sample.dtype);
      let x = ops.nchwToNhwc(sample);
      if (cfg.centerInputSample) x = ops.sub(ops.mul(x, 2), 1);

      // 1. time: sinusoid (float32) -> MLP; every resnet takes silu(emb)
      const embAct = this.embedding(sample, timestep, B, opts.addedCond, hook);

      // 2. down path: conv_in and every block output are skips
      let h = this.convIn.forward(x);
      x.dispose();
      emitNhwc(hook, "conv_in", h);
      const down = this.downPath(h, embAct, ctx, hook);
      h = down.hidden;
      let skips = down.skips;
      // ControlNet: its residuals are added to the skips and to the mid block's output
      if (control) {
        if (control.down.length !== skips.length)
          throw new RangeError(`UNet2DConditionModel.forward: controlResiduals.down has ${control.down.length} tensors, the U-Net has ${skips.length} skips`);
        skips = skips.map((s, i) => ops.add(s, control.down[i].dtype === s.dtype ? control.down[i] : control.down[i].to(s.device, s.dtype)));
      }

      // 3. mid
      if (this.midBlock) {
        h = this.midBlock.forward(h, embAct, ctx, scopeHook(hook, "mid_block."));
        emitNhwc(hook, "mid_block", h);
      }
      if (control) h = ops.add(h, control.mid.dtype === h.dtype ? control.mid : control.mid.to(h.device, h.dtype));

      // 4. up path: each block eats its skips (last first); the upsampler targets the next skips' size
      this.upBlocks.forEach((block, i) => {
        const used = skips.splice(skips.length - block.skipCount, block.skipCount);
        const next = skips[skips.length - 1];
        const size: [number, number] | undefined = next && i < this.upBlocks.length - 1 ? [next.shape[1], next.shape[2]] : undefined;
        const prev = h;
        h = block.forward(prev, used, embAct, ctx, size, scopeHook(hook, `up_blocks.${i}.`));
        for (const s of used) s.dispose();
        prev.dispose();
        emitNhwc(hook, `up_blocks.${i}`, h);
      });

      // 5. out: GroupNorm + SiLU fused; the hook's pre-SiLU value is recomputed on demand
      const hFinal = h;
      emitNhwc(hook, "conv_norm_out", () => this.convNormOut.forward(hFinal));
      const act = this.convNormOut.forward(h, true);
      emitNhwc(hook, "conv_act", act);
      const out = this.convOut.forward(act);
      return ops.nhwcToNchw(out);
    });
  }


}

/** The timestep(s) as float32 [B] on `device` (one value is broadcast, as diffusers' expand). */
function timestepVector(timestep: number | Tensor, B: number, device: string): Tensor {
  if (typeof timestep === "number") {
    if (!Number.isFinite(timestep)) throw new RangeError(`UNet2DConditionModel.forward: timestep must be finite, got ${timestep}`);
    return Tensor.fromArray(new Float32Array(B).fill(timestep), [B], { device });
  }
  const count = timestep.numel;
  if (count !== 1 && count !== B)
    throw new RangeError(`UNet2DConditionModel.forward: timestep must hold 1 or ${B} values, got shape [${timestep.shape.join(",")}]`);
  let t = timestep.reshape([count]);
  if (t.dtype !== "float32" || t.device !== device) t = t.to(device, "float32");
  if (count === 1 && B > 1) t = ops.concat(Array(B).fill(t), 0);
  return t;
}
