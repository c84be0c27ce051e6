/**
 * LoRA adapters for training (Hu et al. 2021): a rank-r branch `scale · (x downᵀ) upᵀ` beside each
 * attention projection of the U-Net (to_q, to_k, to_v, to_out.0: what diffusers'
 * train_text_to_image_lora.py targets), scale = alpha / rank. down starts uniform in
 * ±1/sqrt(in) (PEFT's kaiming-uniform default), up at zero, so training starts from the base model.
 * With textEncoder, the text encoder's attention and MLP layers get adapters too (kohya's lora_te_).
 * With convRank, the U-Net's 3x3 convolutions (resnets, down/upsamplers) get LoCon branches too:
 * down a convolution with the layer's kernel to convRank channels, up a 1x1 convolution, scale
 * convAlpha / convRank (kohya's conv_dim / conv_alpha).
 * Only the adapters train; the models' own weights stay frozen. The result is written as a
 * kohya/A1111 LoRA file (lora_unet_<layer>.lora_down/lora_up/alpha), which loadLora (and the
 * A1111 web UI, stable-diffusion.cpp) read.
 */
import { Tensor } from "../tensor";
import { Conv2d, Linear } from "../nn/layers";
import type { Module } from "../nn/module";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import { writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import { kohyaLayerEntries, kohyaMetadata } from "../lora/keys";
import { Rng } from "./rng";

/** The projections that get an adapter: the U-Net's attention projections ... */
export const LORA_TARGETS = /\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;
/** ... and, with textEncoder, the text encoder's attention and MLP layers (kohya's lora_te_ targets). */
export const LORA_TE_TARGETS = /^text_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$/;
/** ... and, with convRank, the U-Net's 3x3 convolutions in its blocks (kohya's LoCon targets). */
export const LORA_CONV_TARGETS = /^(down_blocks\.\d+\.(resnets\.\d+\.conv[12]|downsamplers\.0\.conv)|mid_block\.resnets\.\d+\.conv[12]|up_blocks\.\d+\.(resnets\.\d+\.conv[12]|upsamplers\.0\.conv))$/;

export interface LoraTrainOptions {
  /** Rank of every adapter. Default 4. */
  rank?: number;
  /** Scale numerator: the branch is multiplied by alpha / rank. Default: rank (scale 1). */
  alpha?: number;
  /** Adapters on the text encoder too (its attention and MLP layers). Default false. */
  textEncoder?: boolean;
  /** LoCon: rank of branches on the U-Net's 3x3 convolutions too. Default: none. */
  convRank?: number;
  /** Their scale numerator (convAlpha / convRank). Default: convRank. */
  convAlpha?: number;
}

interface Entry {
  /** "unet" or "te" (the file's lora_unet_ / lora_te_ prefix). */
  part: "unet" | "te";
  /** The layer's module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q". */
  name: string;
  layer: Linear | Conv2d;
  /** Linear: [rank, in]; Conv2d: [rank, kh, kw, in] (OHWI). */
  down: Tensor;
  /** [out, rank] */
  up: Tensor;
  alpha: number;
}

export class LoraAdapters {
  readonly rank: number;
  readonly alpha: number;
  private readonly entries: Entry[] = [];

  constructor(unet: UNet2DConditionModel, opts: { rank: number; alpha: number; seed: number; device: string; textEncoder?: Module | null; convRank?: number; convAlpha?: number }) {
    this.rank = opts.rank;
    this.alpha = opts.alpha;
    const rng = new Rng(opts.seed, "lora-init");
    // down uniform in ±1/sqrt(fan_in) (PEFT's kaiming-uniform default), up zero: step 0 is the base model
    const branch = (downShape: number[], fanIn: number, out: number, rank: number) => {
      const bound = 1 / Math.sqrt(fanIn);
      const d = Float32Array.from({ length: downShape.reduce((a, b) => a * b, 1) }, () => (2 * rng.float() - 1) * bound);
      const down = Tensor.fromArray(d, downShape, { device: opts.device });
      const up = Tensor.zeros([out, rank], { device: opts.device });
      down.requiresGrad = true;
      up.requiresGrad = true;
      return { down, up };
    };
    const add = (module: Module, part: "unet" | "te", targets: RegExp, conv: boolean) => {
      for (const [param, , owner, local] of module.namedParameterSpecs()) {
        const name = param.slice(0, -".weight".length);
        if (local !== "weight" || !targets.test(name)) continue;
        if (!conv && owner instanceof Linear) {
          this.entries.push({ part, name, layer: owner, alpha: this.alpha, ...branch([this.rank, owner.inFeatures], owner.inFeatures, owner.outFeatures, this.rank) });
        } else if (conv && owner instanceof Conv2d && owner.kernel === 3) {
          const r = opts.convRank!, k = owner.kernel;
          this.entries.push({ part, name, layer: owner, alpha: opts.convAlpha ?? r, ...branch([r, k, k, owner.inChannels], owner.inChannels * k * k, owner.outChannels, r) });
        }
      }
    };
    add(unet, "unet", LORA_TARGETS, false);
    if (this.entries.length === 0) throw new RangeError("LoRA: this U-Net has no attention projections (to_q, to_k, to_v, to_out.0) to adapt");
    if (opts.convRank) add(unet, "unet", LORA_CONV_TARGETS, true);
    if (opts.textEncoder) add(opts.textEncoder, "te", LORA_TE_TARGETS, false);
    this.attach();
  }

  /** Number of adapted layers. */
  get layers(): number {
    return this.entries.length;
  }

  /** The trained tensors, named `lora.<layer>.down` / `.up` (`lora_te.` for the text encoder's; checkpoint order). */
  params(): [string, Tensor][] {
    const p = (e: Entry) => (e.part === "unet" ? "lora" : "lora_te");
    return this.entries.flatMap((e) => [[`${p(e)}.${e.name}.down`, e.down], [`${p(e)}.${e.name}.up`, e.up]] as [string, Tensor][]);
  }

  parameterCount(): number {
    return this.entries.reduce((n, e) => n + e.down.numel + e.up.numel, 0);
  }

  /** Puts the branches on their layers (the constructor does). */
  attach(): void {
    for (const e of this.entries) e.layer.adapter = { down: e.down, up: e.up, scale: e.alpha / e.up.shape[1] };
  }

  /** Takes the branches off (the U-Net computes its base weights again). */
  detach(): void {
    for (const e of this.entries) e.layer.adapter = null;
  }

  /**
   * Writes the adapters as a kohya LoRA file; `replace` swaps in other tensors for some of them
   * (an EMA's shadows). Values are read back as float32.
   */
  async save(file: string, replace?: Map<Tensor, Tensor>): Promise<void> {
    const rec: Record<string, SafetensorsTensorInput> = {};
    for (const e of this.entries) {
      const read = async (t: Tensor) => (replace?.get(t) ?? t).toFloat32Array();
      const down = await read(e.down), up = await read(e.up);
      if (e.layer instanceof Conv2d) {
        // kohya's conv layout: down [rank, in, kh, kw] (from our OHWI), up [out, rank, 1, 1]
        const [r, kh, kw, cin] = e.down.shape;
        const oihw = new Float32Array(down.length);
        for (let o = 0; o < r; o++) for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) for (let c = 0; c < cin; c++)
          oihw[((o * cin + c) * kh + y) * kw + x] = down[((o * kh + y) * kw + x) * cin + c];
        Object.assign(rec, kohyaLayerEntries(e.part, e.name, { shape: [r, cin, kh, kw], data: oihw }, { shape: [e.up.shape[0], e.up.shape[1], 1, 1], data: up }, e.alpha));
      } else {
        Object.assign(rec, kohyaLayerEntries(e.part, e.name, { shape: e.down.shape, data: down }, { shape: e.up.shape, data: up }, e.alpha));
      }
    }
    const conv = this.entries.find((e) => e.layer instanceof Conv2d);
    writeSafetensors(file, rec, kohyaMetadata(this.rank, this.alpha, conv && { rank: conv.up.shape[1], alpha: conv.alpha }));
  }

  dispose(): void {
    this.detach();
    for (const e of this.entries) {
      e.down.dispose();
      e.up.dispose();
    }
    this.entries.length = 0;
  }
}
