// AutoencoderKL (the SD latent VAE), built from a diffusers config.json. NHWC inside, NCHW at
// encode()/decode().
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { Conv2d, GroupNorm, Module } from "../nn";
import { emitNhwc, scopeHook, type ActivationHook } from "../nn/attention";
import { DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, type VaeBlockCommon } from "./blocks/vae-blocks";
import { UnsupportedConfigError } from "./blocks/config";

/** config.json of a diffusers AutoencoderKL (snake_case as in the file; all optional). */
export interface AutoencoderKLConfigJson {
  in_channels?: number;
  out_channels?: number;
  down_block_types?: string[];
  up_block_types?: string[];
  block_out_channels?: number[];
  layers_per_block?: number;
  act_fn?: string;
  latent_channels?: number;
  norm_num_groups?: number;
  sample_size?: number | number[];
  scaling_factor?: number;
  shift_factor?: number | null;
  latents_mean?: number[] | null;
  latents_std?: number[] | null;
  force_upcast?: boolean;
  use_quant_conv?: boolean;
  use_post_quant_conv?: boolean;
  mid_block_add_attention?: boolean;
  [key: string]: unknown;
}

/** The config with diffusers 0.27.2's defaults applied. */
export interface AutoencoderKLConfig {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  latentChannels: number;
  normNumGroups: number;
  sampleSize: number | number[];
  /** Latents are multiplied by this after encoding and divided by it before decode() (by the pipeline). */
  scalingFactor: number;
  shiftFactor: number | null;
  latentsMean: number[] | null;
  latentsStd: number[] | null;
  /** An fp16 VAE should decode in float32 (the pipeline's decision). */
  forceUpcast: boolean;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
  midBlockAddAttention: boolean;
  /** Spatial factor between image and latents: 2^(levels - 1). */
  scaleFactor: number;
}

export function resolveAutoencoderKLConfig(c: AutoencoderKLConfigJson): AutoencoderKLConfig {
  const M = "AutoencoderKL";
  const int = (key: string, v: unknown): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw new RangeError(`${M}: config "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const blockOutChannels = (c.block_out_channels ?? [64]).map((v) => int("block_out_channels", v));
  const n = blockOutChannels.length;
  const down = c.down_block_types ?? ["DownEncoderBlock2D"];
  const up = c.up_block_types ?? ["UpDecoderBlock2D"];
  if (down.some((t) => t !== "DownEncoderBlock2D")) throw new UnsupportedConfigError(M, "down_block_types", down, '"DownEncoderBlock2D"');
  if (up.some((t) => t !== "UpDecoderBlock2D")) throw new UnsupportedConfigError(M, "up_block_types", up, '"UpDecoderBlock2D"');
  // diffusers builds one block per block_out_channels entry; the type lists must match it
  if (down.length !== n || up.length !== n)
    throw new RangeError(`${M}: down_block_types (${down.length}) and up_block_types (${up.length}) must have one entry per block_out_channels entry (${n})`);
  if ((c.act_fn ?? "silu") !== "silu") throw new UnsupportedConfigError(M, "act_fn", c.act_fn, '"silu"');
  return {
    inChannels: int("in_channels", c.in_channels ?? 3),
    outChannels: int("out_channels", c.out_channels ?? 3),
    blockOutChannels,
    layersPerBlock: int("layers_per_block", c.layers_per_block ?? 1),
    latentChannels: int("latent_channels", c.latent_channels ?? 4),
    normNumGroups: int("norm_num_groups", c.norm_num_groups ?? 32),
    sampleSize: c.sample_size ?? 32,
    scalingFactor: c.scaling_factor ?? 0.18215,
    shiftFactor: c.shift_factor ?? null,
    latentsMean: c.latents_mean ?? null,
    latentsStd: c.latents_std ?? null,
    forceUpcast: c.force_upcast ?? true,
    useQuantConv: c.use_quant_conv ?? true,
    usePostQuantConv: c.use_post_quant_conv ?? true,
    midBlockAddAttention: c.mid_block_add_attention ?? true,
    scaleFactor: 2 ** (n - 1),
  };
}

/**
 * diffusers `Encoder` (double_z): conv_in, down blocks (downsample padding 0), mid block,
 * GroupNorm + SiLU, conv_out to 2*latentChannels. Norm eps 1e-6 throughout.
 * Hooks (relative): conv_in, down_blocks.i, mid_block, conv_norm_out (before SiLU), conv_out.
 */
export class Encoder extends Module {
  readonly convIn: Conv2d;
  readonly downBlocks: DownEncoderBlock2D[] = [];
  readonly midBlock: UNetMidBlock2D;
  readonly convNormOut: GroupNorm;
  readonly convOut: Conv2d;
  constructor(cfg: AutoencoderKLConfig) {
    super();
    const boc = cfg.blockOutChannels, common: VaeBlockCommon = { groups: cfg.normNumGroups, eps: 1e-6 };
    this.convIn = this.child("conv_in", new Conv2d(cfg.inChannels, boc[0], { kernel: 3, padding: 1 }));
    let out = boc[0];
    boc.forEach((ch, i) => {
      const cin = out;
      out = ch;
      this.downBlocks.push(this.child(`down_blocks.${i}`, new DownEncoderBlock2D({
        inChannels: cin, outChannels: out, numLayers: cfg.layersPerBlock, addDownsample: i < boc.length - 1, downsamplePadding: 0, common,
      })));
    });
    this.midBlock = this.child("mid_block", new UNetMidBlock2D({ channels: out, addAttention: cfg.midBlockAddAttention, common }));
    this.convNormOut = this.child("conv_norm_out", new GroupNorm(cfg.normNumGroups, out, 1e-6));
    this.convOut = this.child("conv_out", new Conv2d(out, 2 * cfg.latentChannels, { kernel: 3, padding: 1 }));
  }
  /** x [B, H, W, inChannels] -> [B, H/f, W/f, 2*latentChannels] (NHWC). */
  forward(x: Tensor, hook?: ActivationHook): Tensor {
    return tidy(() => {
      let h = this.convIn.forward(x);
      emitNhwc(hook, "conv_in", h);
      this.downBlocks.forEach((block, i) => {
        const next = block.forward(h, scopeHook(hook, `down_blocks.${i}.`));
        h.dispose();
        h = next;
        emitNhwc(hook, `down_blocks.${i}`, h);
      });
      const mid = this.midBlock.forward(h, scopeHook(hook, "mid_block."));
      h.dispose();
      emitNhwc(hook, "mid_block", mid);
      emitNhwc(hook, "conv_norm_out", () => this.convNormOut.forward(mid));
      const out = this.convOut.forward(this.convNormOut.forward(mid, true));
      emitNhwc(hook, "conv_out", out);
      return out;
    });
  }
}

/**
 * diffusers `Decoder` (norm_type "group"): conv_in, mid block, up blocks (layers_per_block + 1
 * resnets each), GroupNorm + SiLU, conv_out. Norm eps 1e-6 throughout.
 * Hooks (relative): conv_in, mid_block, up_blocks.i, conv_norm_out (before SiLU), conv_out.
 */
export class Decoder extends Module {
  readonly convIn: Conv2d;
  readonly midBlock: UNetMidBlock2D;
  readonly upBlocks: UpDecoderBlock2D[] = [];
  readonly convNormOut: GroupNorm;
  readonly convOut: Conv2d;
  constructor(cfg: AutoencoderKLConfig) {
    super();
    const boc = cfg.blockOutChannels, common: VaeBlockCommon = { groups: cfg.normNumGroups, eps: 1e-6 };
    const rboc = [...boc].reverse();
    this.convIn = this.child("conv_in", new Conv2d(cfg.latentChannels, rboc[0], { kernel: 3, padding: 1 }));
    this.midBlock = this.child("mid_block", new UNetMidBlock2D({ channels: rboc[0], addAttention: cfg.midBlockAddAttention, common }));
    let out = rboc[0];
    rboc.forEach((ch, i) => {
      const prev = out;
      out = ch;
      this.upBlocks.push(this.child(`up_blocks.${i}`, new UpDecoderBlock2D({
        inChannels: prev, outChannels: out, numLayers: cfg.layersPerBlock + 1, addUpsample: i < rboc.length - 1, common,
      })));
    });
    this.convNormOut = this.child("conv_norm_out", new GroupNorm(cfg.normNumGroups, boc[0], 1e-6));
    this.convOut = this.child("conv_out", new Conv2d(boc[0], cfg.outChannels, { kernel: 3, padding: 1 }));
  }
  /** z [B, h, w, latentChannels] -> [B, h*f, w*f, outChannels] (NHWC). */
  forward(z: Tensor, hook?: ActivationHook): Tensor {
    return tidy(() => {
      const c = this.convIn.forward(z);
      emitNhwc(hook, "conv_in", c);
      let h = this.midBlock.forward(c, scopeHook(hook, "mid_block."));
      c.dispose();
      emitNhwc(hook, "mid_block", h);
      this.upBlocks.forEach((block, i) => {
        const next = block.forward(h, scopeHook(hook, `up_blocks.${i}.`));
        h.dispose();
        h = next;
        emitNhwc(hook, `up_blocks.${i}`, h);
      });
      const last = h;
      emitNhwc(hook, "conv_norm_out", () => this.convNormOut.forward(last));
      const act = this.convNormOut.forward(h, true);
      h.dispose();
      const out = this.convOut.forward(act);
      emitNhwc(hook, "conv_out", out);
      return out;
    });
  }
}

/**
 * Maps the attention names of VAE checkpoints saved by diffusers before 0.14 (`query`, `key`,
 * `value`, `proj_attn`, all Linear [C, C] or [C]) to today's (`to_q`, `to_k`, `to_v`, `to_out.0`),
 * as diffusers' _convert_deprecated_attention_blocks does at load; other keys pass unchanged.
 */
export function renameLegacyVaeKey(key: string): string {
  const m = /^(.*\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$/.exec(key);
  if (!m) return key;
  const to = { query: "to_q", key: "to_k", value: "to_v", proj_attn: "to_out.0" }[m[2] as "query" | "key" | "value" | "proj_attn"];
  return `${m[1]}${to}.${m[3]}`;
}

export interface VaeForwardOptions {
  /** Receives named activations as diffusers' forward hooks see them (see ActivationHook). */
  hooks?: ActivationHook;
}

/** The encoder's diagonal Gaussian posterior (diffusers DiagonalGaussianDistribution), NCHW. */
export interface LatentDistribution {
  mean: Tensor;
  /** Clamped to [-30, 20]; std = exp(logvar / 2). */
  logvar: Tensor;
}

/**
 * The KL autoencoder. Hook names (as in the reference data): encoder.*, quant_conv for encode;
 * post_quant_conv, decoder.* for decode.
 */
export class AutoencoderKL extends Module {
  readonly config: AutoencoderKLConfig;
  /** The config.json this model was built from (as given). */
  readonly configJson: Readonly<AutoencoderKLConfigJson>;
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantConv: Conv2d | null;
  readonly postQuantConv: Conv2d | null;

  constructor(configJson: AutoencoderKLConfigJson) {
    super();
    const cfg = this.config = resolveAutoencoderKLConfig(configJson);
    this.configJson = Object.freeze({ ...configJson });
    const L = cfg.latentChannels;
    this.encoder = this.child("encoder", new Encoder(cfg));
    this.decoder = this.child("decoder", new Decoder(cfg));
    this.quantConv = cfg.useQuantConv ? this.child("quant_conv", new Conv2d(2 * L, 2 * L, { kernel: 1 })) : null;
    this.postQuantConv = cfg.usePostQuantConv ? this.child("post_quant_conv", new Conv2d(L, L, { kernel: 1 })) : null;
    // bf16 Winograd's rounding compounds through the decoder into the pixels (see Conv2d.winogradBf16)
    for (const m of this.modules()) if (m instanceof Conv2d) m.winogradBf16 = false;
  }

  /** image [B, inChannels, H, W] (NCHW, values in [-1, 1]) -> the latent posterior, each [B, L, H/f, W/f]. */
  encode(image: Tensor, opts: VaeForwardOptions = {}): LatentDistribution {
    const cfg = this.config;
    if (image.ndim !== 4 || image.shape[1] !== cfg.inChannels)
      throw new RangeError(`AutoencoderKL.encode: image must be [B, ${cfg.inChannels}, H, W], got [${image.shape.join(",")}]`);
    const hook = opts.hooks;
    return tidy(() => {
      const x = ops.nchwToNhwc(image);
      let moments = this.encoder.forward(x, scopeHook(hook, "encoder."));
      x.dispose();
      if (this.quantConv) {
        moments = this.quantConv.forward(moments);
        emitNhwc(hook, "quant_conv", moments);
      }
      const [meanNhwc, logvarNhwc] = ops.split(moments, [cfg.latentChannels, cfg.latentChannels], 3);
      return { mean: ops.nhwcToNchw(meanNhwc), logvar: ops.nhwcToNchw(ops.clamp(logvarNhwc, -30, 20)) };
    });
  }

  /** z [B, L, h, w] (NCHW, already divided by scalingFactor) -> image [B, outChannels, h*f, w*f] (NCHW, nominally [-1, 1]). */
  decode(z: Tensor, opts: VaeForwardOptions = {}): Tensor {
    const cfg = this.config;
    if (z.ndim !== 4 || z.shape[1] !== cfg.latentChannels)
      throw new RangeError(`AutoencoderKL.decode: latents must be [B, ${cfg.latentChannels}, h, w], got [${z.shape.join(",")}]`);
    const hook = opts.hooks;
    return tidy(() => {
      let h = ops.nchwToNhwc(z);
      if (this.postQuantConv) {
        h = this.postQuantConv.forward(h);
        emitNhwc(hook, "post_quant_conv", h);
      }
      const out = this.decoder.forward(h, scopeHook(hook, "decoder."));
      return ops.nhwcToNchw(out);
    });
  }
}
