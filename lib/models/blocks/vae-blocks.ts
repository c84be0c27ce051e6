// The VAE's blocks (diffusers unet_2d_blocks.py): DownEncoderBlock2D, UpDecoderBlock2D and
// UNetMidBlock2D with its single-head, group-normed self-attention. No time embedding. NHWC.
import { Tensor, tidy } from "../../tensor";
import { Module } from "../../nn";
import { Attention, emitNhwc, scopeHook, type ActivationHook } from "../../nn/attention";
import { Downsample2D, ResnetBlock2D, Upsample2D } from "./resnet";

export interface VaeBlockCommon {
  groups: number;
  /** 1e-6 in diffusers' Encoder/Decoder. */
  eps: number;
}

function resnet(cin: number, cout: number, common: VaeBlockCommon): ResnetBlock2D {
  return new ResnetBlock2D({ inChannels: cin, outChannels: cout, tembChannels: null, groups: common.groups, eps: common.eps });
}

/** `numLayers` resnets, then (unless last) a stride-2 downsampler with the asymmetric (0,1,0,1) pad. */
export class DownEncoderBlock2D extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly downsampler: Downsample2D | null;
  constructor(cfg: { inChannels: number; outChannels: number; numLayers: number; addDownsample: boolean; downsamplePadding?: number; common: VaeBlockCommon }) {
    super();
    for (let i = 0; i < cfg.numLayers; i++)
      this.resnets.push(this.child(`resnets.${i}`, resnet(i === 0 ? cfg.inChannels : cfg.outChannels, cfg.outChannels, cfg.common)));
    this.downsampler = cfg.addDownsample
      ? this.child("downsamplers.0", new Downsample2D(cfg.outChannels, cfg.outChannels, cfg.downsamplePadding ?? 0))
      : null;
  }
  forward(x: Tensor, hook?: ActivationHook): Tensor {
    return resnetsThen(x, this.resnets, this.downsampler, "downsamplers.0", hook);
  }
}

/** The encoder/decoder block body: each resnet in turn, then the resampler if any (freeing as it goes). */
function resnetsThen(x: Tensor, resnets: ResnetBlock2D[], resampler: { forward(h: Tensor): Tensor } | null,
  resamplerName: string, hook?: ActivationHook): Tensor {
  return tidy(() => {
    let h = x;
    const step = (next: Tensor, name: string) => {
      if (h !== x) h.dispose();
      h = next;
      emitNhwc(hook, name, h);
    };
    resnets.forEach((res, i) => step(res.forward(h, null), `resnets.${i}`));
    if (resampler) step(resampler.forward(h), resamplerName);
    return h;
  });
}

/** `numLayers` resnets, then (unless last) nearest-2x + 3x3 conv. */
export class UpDecoderBlock2D extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly upsampler: Upsample2D | null;
  constructor(cfg: { inChannels: number; outChannels: number; numLayers: number; addUpsample: boolean; common: VaeBlockCommon }) {
    super();
    for (let i = 0; i < cfg.numLayers; i++)
      this.resnets.push(this.child(`resnets.${i}`, resnet(i === 0 ? cfg.inChannels : cfg.outChannels, cfg.outChannels, cfg.common)));
    this.upsampler = cfg.addUpsample ? this.child("upsamplers.0", new Upsample2D(cfg.outChannels, cfg.outChannels)) : null;
  }
  forward(x: Tensor, hook?: ActivationHook): Tensor {
    return resnetsThen(x, this.resnets, this.upsampler, "upsamplers.0", hook);
  }
}

/**
 * UNetMidBlock2D as the VAE builds it: resnet, then (if addAttention) a single-head self-attention
 * over the H*W tokens with its own GroupNorm and biased projections, residual added, then a resnet.
 * Hooks (relative): resnets.i, attentions.0.
 */
export class UNetMidBlock2D extends Module {
  readonly resnets: ResnetBlock2D[] = [];
  readonly attention: Attention | null;
  constructor(cfg: { channels: number; addAttention?: boolean; common: VaeBlockCommon }) {
    super();
    const c = cfg.channels;
    this.resnets.push(this.child("resnets.0", resnet(c, c, cfg.common)));
    // diffusers: heads = channels // attention_head_dim with attention_head_dim = channels
    this.attention = (cfg.addAttention ?? true)
      ? this.child("attentions.0", new Attention({ queryDim: c, heads: 1, dimHead: c, qkvBias: true, normGroups: cfg.common.groups, normEps: cfg.common.eps, upcastSoftmax: true }))
      : null;
    this.resnets.push(this.child("resnets.1", resnet(c, c, cfg.common)));
  }
  forward(x: Tensor, hook?: ActivationHook): Tensor {
    const [B, H, W, C] = x.shape;
    return tidy(() => {
      let h = this.resnets[0].forward(x, null, scopeHook(hook, "resnets.0."));
      emitNhwc(hook, "resnets.0", h);
      if (this.attention) {
        const tokens = h.reshape([B, H * W, C]);
        h = this.attention.forward(tokens, null, tokens).reshape([B, H, W, C]);
        emitNhwc(hook, "attentions.0", h);
      }
      h = this.resnets[1].forward(h, null, scopeHook(hook, "resnets.1."));
      emitNhwc(hook, "resnets.1", h);
      return h;
    });
  }
}
