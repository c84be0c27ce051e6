// Model sizes for training from scratch, as diffusers/transformers config.json objects.
//
//   UNet "small": block_out_channels (32, 64, 64), cross-attention at the two lower levels, one
//     resnet per level, 4 heads: ~1.7 M parameters (6.7 MB), for 16x16-32x32 latents (64-128 px
//     images through a 4x VAE).
//   UNet "base": (64, 128, 128), two resnets per level, 8 heads: ~10 M parameters (40 MB).
//   Text encoder "small": CLIP with hidden 64, 2 layers, 4 heads (~0.1 M parameters with a trimmed
//     vocabulary); "base": hidden 128, 4 layers (~0.9 M).
//   VAE (trainVae defaults): block_out_channels (32, 64, 64) -> a 4x spatial factor, 4 latent channels.
import type { UNet2DConditionConfigJson } from "../models/unet-2d-condition";
import type { AutoencoderKLConfigJson } from "../models/autoencoder-kl";

export type ModelSize = "small" | "base";
export const MODEL_SIZES: readonly ModelSize[] = ["small", "base"];

export interface UNetShape {
  latentChannels: number;
  crossAttentionDim: number;
  /** Latent side. */
  sampleSize: number;
}

const UNET_PRESETS: Record<ModelSize, UNet2DConditionConfigJson> = {
  small: {
    block_out_channels: [32, 64, 64],
    down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    layers_per_block: 1,
    norm_num_groups: 8,
    attention_head_dim: 4,
  },
  base: {
    block_out_channels: [64, 128, 128],
    down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    layers_per_block: 2,
    norm_num_groups: 32,
    attention_head_dim: 8,
  },
};

/**
 * A complete UNet config.json: a preset name or a partial config, with the latent channels, the
 * text width and the sample size filled in (a given config keeps its own values for other keys).
 */
export function unetConfig(model: ModelSize | UNet2DConditionConfigJson, shape: UNetShape): UNet2DConditionConfigJson {
  let base: UNet2DConditionConfigJson;
  if (typeof model === "string") {
    if (!MODEL_SIZES.includes(model)) throw new RangeError(`model must be one of ${MODEL_SIZES.map((m) => `"${m}"`).join(", ")} or a UNet config object, got ${JSON.stringify(model)}`);
    base = UNET_PRESETS[model];
  } else if (model && typeof model === "object" && !Array.isArray(model)) {
    base = model;
  } else {
    throw new TypeError(`model must be "small", "base" or a UNet config object, got ${JSON.stringify(model)}`);
  }
  return {
    _class_name: "UNet2DConditionModel",
    _diffusers_version: "0.27.2",
    act_fn: "silu",
    center_input_sample: false,
    downsample_padding: 1,
    flip_sin_to_cos: true,
    freq_shift: 0,
    mid_block_scale_factor: 1,
    norm_eps: 1e-5,
    use_linear_projection: false,
    ...base,
    in_channels: shape.latentChannels,
    out_channels: shape.latentChannels,
    cross_attention_dim: shape.crossAttentionDim,
    sample_size: shape.sampleSize,
  };
}

const TEXT_PRESETS: Record<ModelSize, { hidden_size: number; intermediate_size: number; num_hidden_layers: number; num_attention_heads: number }> = {
  small: { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4 },
  base: { hidden_size: 128, intermediate_size: 512, num_hidden_layers: 4, num_attention_heads: 4 },
};

/** A transformers CLIPTextModel config.json for a text encoder trained from scratch. */
export function textEncoderConfig(
  size: ModelSize | Record<string, unknown>, ids: { vocabSize: number; bos: number; eos: number; pad: number; maxLength: number },
): Record<string, unknown> {
  const base = typeof size === "string" ? TEXT_PRESETS[size] : size;
  if (!base) throw new RangeError(`textEncoderConfig must be one of ${MODEL_SIZES.join(", ")} or a config object, got ${JSON.stringify(size)}`);
  return {
    architectures: ["CLIPTextModel"],
    model_type: "clip_text_model",
    hidden_act: "quick_gelu",
    layer_norm_eps: 1e-5,
    initializer_factor: 1.0,
    initializer_range: 0.02,
    attention_dropout: 0.0,
    dropout: 0.0,
    projection_dim: 512,
    torch_dtype: "float32",
    transformers_version: "4.40.0",
    ...base,
    vocab_size: ids.vocabSize,
    max_position_embeddings: ids.maxLength,
    bos_token_id: ids.bos,
    eos_token_id: ids.eos,
    pad_token_id: ids.pad,
  };
}

export interface VaeShape {
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  normNumGroups: number;
  resolution: number;
  scalingFactor: number;
  midBlockAttention: boolean;
}

/** A diffusers AutoencoderKL config.json. */
export function vaeConfig(s: VaeShape): AutoencoderKLConfigJson {
  return {
    _class_name: "AutoencoderKL",
    _diffusers_version: "0.27.2",
    act_fn: "silu",
    block_out_channels: s.blockOutChannels,
    down_block_types: s.blockOutChannels.map(() => "DownEncoderBlock2D"),
    up_block_types: s.blockOutChannels.map(() => "UpDecoderBlock2D"),
    in_channels: 3,
    out_channels: 3,
    latent_channels: s.latentChannels,
    layers_per_block: s.layersPerBlock,
    norm_num_groups: s.normNumGroups,
    sample_size: s.resolution,
    scaling_factor: s.scalingFactor,
    force_upcast: true,
    mid_block_add_attention: s.midBlockAttention,
  };
}

/** The DDPM noise schedule every trainer here uses (SD1.x's), written as a DDIM scheduler config. */
export function schedulerConfig(predictionType: "epsilon" | "v_prediction"): Record<string, unknown> {
  return {
    _class_name: "DDIMScheduler",
    _diffusers_version: "0.27.2",
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    prediction_type: predictionType,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
    timestep_spacing: "leading",
    trained_betas: null,
  };
}
