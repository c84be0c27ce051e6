/**
 * ControlNet (Zhang et al. 2023), as diffusers' ControlNetModel (0.27.2): a copy of the U-Net's
 * encoder half (conv_in, time embedding, down blocks, mid block: UNetEncoderBase, the same names)
 * that also sees a control image through a small conv stack (controlnet_cond_embedding), and hands
 * the U-Net one residual per skip and one for the mid block through 1x1 "zero" convolutions
 * (controlnet_down_blocks, controlnet_mid_block), scaled by the conditioning scale.
 */
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { Conv2d, Module } from "../nn";
import { emitNhwc, scopeHook, type ActivationHook } from "../nn/attention";
import { UNetEncoderBase, type AddedCond, type ControlResiduals, type UNet2DConditionConfigJson } from "./unet-2d-condition";
import { UnsupportedConfigError } from "./blocks/config";

/** config.json of a diffusers ControlNetModel: the U-Net's keys plus these. */
export interface ControlNetConfigJson extends UNet2DConditionConfigJson {
  conditioning_channels?: number;
  conditioning_embedding_out_channels?: number[];
  controlnet_conditioning_channel_order?: string;
  global_pool_conditions?: boolean;
}

/** controlnet_cond_embedding: conv_in, pairs of 3x3 convs (the second of each halves the size), conv_out; SiLU between. */
class ControlNetConditioningEmbedding extends Module {
  private readonly convIn: Conv2d;
  private readonly blocks: Conv2d[] = [];
  private readonly convOut: Conv2d;
  constructor(conditioningChannels: number, channels: number[], outChannels: number) {
    super();
    this.convIn = this.child("conv_in", new Conv2d(conditioningChannels, channels[0], { kernel: 3, padding: 1 }));
    for (let i = 0; i < channels.length - 1; i++) {
      this.blocks.push(this.child(`blocks.${2 * i}`, new Conv2d(channels[i], channels[i], { kernel: 3, padding: 1 })));
      this.blocks.push(this.child(`blocks.${2 * i + 1}`, new Conv2d(channels[i], channels[i + 1], { kernel: 3, padding: 1, stride: 2 })));
    }
    this.convOut = this.child("conv_out", new Conv2d(channels[channels.length - 1], outChannels, { kernel: 3, padding: 1 }));
  }
  /** NHWC image -> NHWC features at the latent size. */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      let h = ops.silu(this.convIn.forward(x));
      for (const b of this.blocks) h = ops.silu(b.forward(h));
      return this.convOut.forward(h);
    });
  }
}

export class ControlNetModel extends UNetEncoderBase {
  readonly conditioningChannels: number;
  /** The control image's pixel size is the latents' times this (8 for SD). */
  readonly imageScale: number;
  private readonly bgr: boolean;
  private readonly condEmbedding: ControlNetConditioningEmbedding;
  private readonly zeroDown: Conv2d[] = [];
  private readonly zeroMid: Conv2d;

  constructor(configJson: ControlNetConfigJson) {
    const M = "ControlNetModel";
    const down = configJson.down_block_types ?? ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
    // the U-Net config checks want an up path: the mirror of the down path (never built here)
    super({ ...configJson, up_block_types: [...down].reverse().map((t) => (t === "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D")) });
    if (configJson.global_pool_conditions) throw new UnsupportedConfigError(M, "global_pool_conditions", true, "false");
    const order = configJson.controlnet_conditioning_channel_order ?? "rgb";
    if (order !== "rgb" && order !== "bgr") throw new UnsupportedConfigError(M, "controlnet_conditioning_channel_order", order, '"rgb", "bgr"');
    this.bgr = order === "bgr";
    const cfg = this.config, boc = cfg.blockOutChannels;
    this.conditioningChannels = configJson.conditioning_channels ?? 3;
    const embChannels = configJson.conditioning_embedding_out_channels ?? [16, 32, 96, 256];
    this.imageScale = 2 ** (embChannels.length - 1);
    this.condEmbedding = this.child("controlnet_cond_embedding", new ControlNetConditioningEmbedding(this.conditioningChannels, embChannels, boc[0]));
    // one 1x1 conv per U-Net skip: conv_in's output, then each layer of each block, then each downsampler
    const zero = (c: number) => this.child(`controlnet_down_blocks.${this.zeroDown.length}`, new Conv2d(c, c, { kernel: 1 }));
    this.zeroDown.push(zero(boc[0]));
    boc.forEach((c, i) => {
      for (let j = 0; j < cfg.layersPerBlock[i]; j++) this.zeroDown.push(zero(c));
      if (i < boc.length - 1) this.zeroDown.push(zero(c));
    });
    this.zeroMid = this.child("controlnet_mid_block", new Conv2d(boc[boc.length - 1], boc[boc.length - 1], { kernel: 1 }));
  }

  /**
   * sample [B, in, h, w] (NCHW, the U-Net's input), timestep, encoderHiddenStates [B, M, D], and the
   * control image [B, conditioning_channels, h·imageScale, w·imageScale] in [0, 1] (NCHW) ->
   * residuals for UNet2DConditionModel.forward's controlResiduals, multiplied by `scale`.
   */
  forward(sample: Tensor, timestep: number | Tensor, encoderHiddenStates: Tensor, controlImage: Tensor,
    opts: { scale?: number; addedCond?: AddedCond; hooks?: ActivationHook } = {}): ControlResiduals {
    const B = this.checkInputs("ControlNetModel", sample, encoderHiddenStates);
    const [, , h, w] = sample.shape;
    const want = [B, this.conditioningChannels, h * this.imageScale, w * this.imageScale];
    if (controlImage.ndim !== 4 || controlImage.shape.some((d, i) => d !== want[i]))
      throw new RangeError(`ControlNetModel.forward: the control image must be [${want.join(", ")}], got [${controlImage.shape.join(",")}]`);
    const scale = opts.scale ?? 1;
    const hook = opts.hooks;
    const out = tidy(() => {
      const ctx = encoderHiddenStates.dtype === sample.dtype && encoderHiddenStates.device === sample.device ? encoderHiddenStates : encoderHiddenStates.to(sample.device, sample.dtype);
      const embAct = this.embedding(sample, timestep, B, opts.addedCond, hook);
      let cond = controlImage.dtype === sample.dtype && controlImage.device === sample.device ? controlImage : controlImage.to(sample.device, sample.dtype);
      if (this.bgr) cond = ops.concat([ops.slice(cond, 1, 2, 3), ops.slice(cond, 1, 1, 2), ops.slice(cond, 1, 0, 1)], 1);
      const x = ops.nchwToNhwc(sample);
      const condFeatures = this.condEmbedding.forward(ops.nchwToNhwc(cond));
      emitNhwc(hook, "controlnet_cond_embedding", condFeatures);
      const h0 = ops.add(this.convIn.forward(x), condFeatures);
      const down = this.downPath(h0, embAct, ctx, hook);
      const mid = this.midBlock ? this.midBlock.forward(down.hidden, embAct, ctx, scopeHook(hook, "mid_block.")) : down.hidden;
      const scaled = (t: Tensor) => (scale === 1 ? t : ops.mul(t, scale));
      return { down: down.skips.map((s, i) => scaled(this.zeroDown[i].forward(s))), mid: scaled(this.zeroMid.forward(mid)) };
    });
    return out;
  }
}
