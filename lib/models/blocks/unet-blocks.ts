// The U-Net's down, mid and up blocks (diffusers unet_2d_blocks.py names and wiring). NHWC.
import * as ops from "../../ops";
import { Tensor, tidy } from "../../tensor";
import { Module } from "../../nn";
import { Transformer2DModel, emitNhwc, scopeHook, type ActivationHook } from "../../nn/attention";
import { Downsample2D, ResnetBlock2D, Upsample2D } from "./resnet";

/** Settings every U-Net block shares (resolved from the model config). */
export interface UNetBlockCommon {
  tembChannels: number;
  groups: number;
  eps: number;
  /** ResnetBlock2D output_scale_factor (resnet_out_scale_factor; mid_block_scale_factor in the mid block). */
  outputScaleFactor: number;
}

/** Cross-attention settings of the blocks that hold Transformer2DModels. */
export interface UNetAttentionSettings {
  heads: number;
  crossAttentionDim: number;
  /** BasicTransformerBlocks per Transformer2DModel, one entry per layer of the block. */
  transformerLayers: number[];
  useLinearProjection: boolean;
  upcastAttention: boolean;
}

/** What a down block returns: the hidden state going on, and the skips it leaves for the up path. */
export interface DownBlockOutput {
  hidden: Tensor;
  /** After each layer, then after the downsampler (diffusers' output_states). */
  skips: Tensor[];
}

function transformer(channels: number, common: UNetBlockCommon, attn: UNetAttentionSettings, layer: number): Transformer2DModel {
  if (channels % attn.heads) throw new RangeError(`Transformer2DModel: ${attn.heads} heads do not divide ${channels} channels`);
  return new Transformer2DModel({
    inChannels: channels, heads: attn.heads, dimHead: Math.floor(channels / attn.heads), numLayers: attn.transformerLayers[layer],
    crossAttentionDim: attn.crossAttentionDim, normGroups: common.groups, useLinearProjection: attn.useLinearProjection,
    upcastAttention: attn.upcastAttention,
  });
}

function resnet(cin: number, cout: number, common: UNetBlockCommon): ResnetBlock2D {
  return new ResnetBlock2D({ inChannels: cin, outChannels: cout, tembChannels: common.tembChannels, groups: common.groups, eps: common.eps, outputScaleFactor: common.outputScaleFactor });
}

/**
 * DownBlock2D (attention = null) and CrossAttnDownBlock2D: `numLayers` resnets (each followed by
 * a Transformer2DModel in the cross-attention form), then an optional stride-2 downsampler.
 * Hooks (relative): resnets.i, attentions.i(...), downsamplers.0.
 */
export class DownBlock2D extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[] = [];
  readonly downsampler: Downsample2D | null;

  constructor(cfg: { inChannels: number; outChannels: number; numLayers: number; addDownsample: boolean; downsamplePadding: number;
    common: UNetBlockCommon; attention?: UNetAttentionSettings | null }) {
    super();
    for (let i = 0; i < cfg.numLayers; i++) {
      this.resnets.push(this.child(`resnets.${i}`, resnet(i === 0 ? cfg.inChannels : cfg.outChannels, cfg.outChannels, cfg.common)));
      if (cfg.attention) this.attentions.push(this.child(`attentions.${i}`, transformer(cfg.outChannels, cfg.common, cfg.attention, i)));
    }
    this.downsampler = cfg.addDownsample
      ? this.child("downsamplers.0", new Downsample2D(cfg.outChannels, cfg.outChannels, cfg.downsamplePadding))
      : null;
  }

  forward(x: Tensor, tembAct: Tensor, context: Tensor, hook?: ActivationHook): DownBlockOutput {
    return tidy(() => {
      const skips: Tensor[] = [];
      let h = x;
      this.resnets.forEach((res, i) => {
        h = res.forward(h, tembAct, scopeHook(hook, `resnets.${i}.`));
        emitNhwc(hook, `resnets.${i}`, h);
        const attn = this.attentions[i];
        if (attn) {
          h = attn.forward(h, context, scopeHook(hook, `attentions.${i}.`));
          emitNhwc(hook, `attentions.${i}`, h);
        }
        skips.push(h);
      });
      if (this.downsampler) {
        h = this.downsampler.forward(h);
        emitNhwc(hook, "downsamplers.0", h);
        skips.push(h);
      }
      // intermediates that are not skips (resnet outputs under an attention) go with this scope
      return { hidden: h, skips };
    });
  }
}

/**
 * UpBlock2D (attention = null) and CrossAttnUpBlock2D: `numLayers` resnets, each taking the
 * hidden state concatenated (channels) with the most recent skip, each followed by a
 * Transformer2DModel in the cross-attention form; then an optional nearest-2x upsampler.
 * Hooks (relative): resnets.i, attentions.i(...), upsamplers.0.
 */
export class UpBlock2D extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[] = [];
  readonly upsampler: Upsample2D | null;

  constructor(cfg: { inChannels: number; prevOutputChannels: number; outChannels: number; numLayers: number; addUpsample: boolean;
    common: UNetBlockCommon; attention?: UNetAttentionSettings | null }) {
    super();
    for (let i = 0; i < cfg.numLayers; i++) {
      const skipChannels = i === cfg.numLayers - 1 ? cfg.inChannels : cfg.outChannels;
      const resIn = i === 0 ? cfg.prevOutputChannels : cfg.outChannels;
      this.resnets.push(this.child(`resnets.${i}`, resnet(resIn + skipChannels, cfg.outChannels, cfg.common)));
      if (cfg.attention) this.attentions.push(this.child(`attentions.${i}`, transformer(cfg.outChannels, cfg.common, cfg.attention, i)));
    }
    this.upsampler = cfg.addUpsample ? this.child("upsamplers.0", new Upsample2D(cfg.outChannels, cfg.outChannels)) : null;
  }

  /** How many skips this block consumes. */
  get skipCount(): number { return this.resnets.length; }

  /**
   * x [B, H, W, C]; `skips` in down-path order (the last is used first); `upsampleSize` is the
   * spatial size the upsampler must produce (the next block's skips). -> [B, H', W', Cout].
   */
  forward(x: Tensor, skips: readonly Tensor[], tembAct: Tensor, context: Tensor, upsampleSize?: readonly [number, number], hook?: ActivationHook): Tensor {
    if (skips.length !== this.resnets.length) throw new RangeError(`UpBlock2D: expected ${this.resnets.length} skips, got ${skips.length}`);
    return tidy(() => {
      let h = x;
      this.resnets.forEach((res, i) => {
        const cat = ops.concat([h, skips[skips.length - 1 - i]], 3);
        h = res.forward(cat, tembAct, scopeHook(hook, `resnets.${i}.`));
        cat.dispose();
        emitNhwc(hook, `resnets.${i}`, h);
        const attn = this.attentions[i];
        if (attn) {
          h = attn.forward(h, context, scopeHook(hook, `attentions.${i}.`));
          emitNhwc(hook, `attentions.${i}`, h);
        }
      });
      if (this.upsampler) {
        h = this.upsampler.forward(h, upsampleSize);
        emitNhwc(hook, "upsamplers.0", h);
      }
      return h;
    });
  }
}

/**
 * UNetMidBlock2DCrossAttn: resnet, then per layer a Transformer2DModel and a resnet.
 * Hooks (relative): resnets.i, attentions.i(...).
 */
export class UNetMidBlock2DCrossAttn extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attentions: Transformer2DModel[] = [];

  constructor(cfg: { channels: number; numLayers?: number; common: UNetBlockCommon; attention: UNetAttentionSettings }) {
    super();
    const layers = cfg.numLayers ?? 1;
    this.resnets.push(this.child("resnets.0", resnet(cfg.channels, cfg.channels, cfg.common)));
    for (let i = 0; i < layers; i++) {
      this.attentions.push(this.child(`attentions.${i}`, transformer(cfg.channels, cfg.common, cfg.attention, i)));
      this.resnets.push(this.child(`resnets.${i + 1}`, resnet(cfg.channels, cfg.channels, cfg.common)));
    }
  }

  forward(x: Tensor, tembAct: Tensor, context: Tensor, hook?: ActivationHook): Tensor {
    return tidy(() => {
      let h = this.resnets[0].forward(x, tembAct, scopeHook(hook, "resnets.0."));
      emitNhwc(hook, "resnets.0", h);
      this.attentions.forEach((attn, i) => {
        h = attn.forward(h, context, scopeHook(hook, `attentions.${i}.`));
        emitNhwc(hook, `attentions.${i}`, h);
        h = this.resnets[i + 1].forward(h, tembAct, scopeHook(hook, `resnets.${i + 1}.`));
        emitNhwc(hook, `resnets.${i + 1}`, h);
      });
      return h;
    });
  }
}

type DownBlockConfig = ConstructorParameters<typeof DownBlock2D>[0];
type UpBlockConfig = ConstructorParameters<typeof UpBlock2D>[0];

/** DownBlock2D with a Transformer2DModel after every resnet. */
export class CrossAttnDownBlock2D extends DownBlock2D {
  constructor(cfg: DownBlockConfig & { attention: UNetAttentionSettings }) { super(cfg); }
}

/** UpBlock2D with a Transformer2DModel after every resnet. */
export class CrossAttnUpBlock2D extends UpBlock2D {
  constructor(cfg: UpBlockConfig & { attention: UNetAttentionSettings }) { super(cfg); }
}
