/**
 * LoRA adapters for training (Hu et al. 2021): a rank-r branch `scale · (x downᵀ) upᵀ` beside each
 * attention projection of the U-Net (to_q, to_k, to_v, to_out.0: what diffusers'
 * train_text_to_image_lora.py targets), scale = alpha / rank. down starts uniform in
 * ±1/sqrt(in) (PEFT's kaiming-uniform default), up at zero, so training starts from the base model.
 * Only the adapters train; the U-Net's own weights stay frozen. The result is written as a
 * kohya/A1111 LoRA file (lora_unet_<layer>.lora_down/lora_up/alpha), which loadLora (and the
 * A1111 web UI, stable-diffusion.cpp) read.
 */
import { Tensor } from "../tensor";
import { Linear } from "../nn/layers";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import { writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import { Rng } from "./rng";

/** The projections that get an adapter. */
export const LORA_TARGETS = /\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

export interface LoraTrainOptions {
  /** Rank of every adapter. Default 4. */
  rank?: number;
  /** Scale numerator: the branch is multiplied by alpha / rank. Default: rank (scale 1). */
  alpha?: number;
}

interface Entry {
  /** The layer's module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q". */
  name: string;
  linear: Linear;
  down: Tensor;
  up: Tensor;
}

export class LoraAdapters {
  readonly rank: number;
  readonly alpha: number;
  private readonly entries: Entry[] = [];

  constructor(unet: UNet2DConditionModel, opts: { rank: number; alpha: number; seed: number; device: string }) {
    this.rank = opts.rank;
    this.alpha = opts.alpha;
    const rng = new Rng(opts.seed, "lora-init");
    for (const [param, , owner, local] of unet.namedParameterSpecs()) {
      const name = param.slice(0, -".weight".length);
      if (local !== "weight" || !(owner instanceof Linear) || !LORA_TARGETS.test(name)) continue;
      const bound = 1 / Math.sqrt(owner.inFeatures);
      const d = Float32Array.from({ length: this.rank * owner.inFeatures }, () => (2 * rng.float() - 1) * bound);
      const down = Tensor.fromArray(d, [this.rank, owner.inFeatures], { device: opts.device });
      const up = Tensor.zeros([owner.outFeatures, this.rank], { device: opts.device });
      down.requiresGrad = true;
      up.requiresGrad = true;
      this.entries.push({ name, linear: owner, down, up });
    }
    if (this.entries.length === 0) throw new RangeError("LoRA: this U-Net has no attention projections (to_q, to_k, to_v, to_out.0) to adapt");
    this.attach();
  }

  /** Number of adapted layers. */
  get layers(): number {
    return this.entries.length;
  }

  /** The trained tensors, named `lora.<layer>.down` / `.up` (checkpoint order). */
  params(): [string, Tensor][] {
    return this.entries.flatMap((e) => [[`lora.${e.name}.down`, e.down], [`lora.${e.name}.up`, e.up]] as [string, Tensor][]);
  }

  parameterCount(): number {
    return this.entries.reduce((n, e) => n + e.down.numel + e.up.numel, 0);
  }

  /** Puts the branches on their layers (the constructor does). */
  attach(): void {
    for (const e of this.entries) e.linear.adapter = { down: e.down, up: e.up, scale: this.alpha / this.rank };
  }

  /** Takes the branches off (the U-Net computes its base weights again). */
  detach(): void {
    for (const e of this.entries) e.linear.adapter = null;
  }

  /**
   * Writes the adapters as a kohya LoRA file; `replace` swaps in other tensors for some of them
   * (an EMA's shadows). Values are read back as float32.
   */
  async save(file: string, replace?: Map<Tensor, Tensor>): Promise<void> {
    const rec: Record<string, SafetensorsTensorInput> = {};
    for (const e of this.entries) {
      const key = `lora_unet_${e.name.replace(/\./g, "_")}`;
      const read = async (t: Tensor) => (replace?.get(t) ?? t).toFloat32Array();
      rec[`${key}.lora_down.weight`] = { dtype: "F32", shape: [...e.down.shape], data: await read(e.down) };
      rec[`${key}.lora_up.weight`] = { dtype: "F32", shape: [...e.up.shape], data: await read(e.up) };
      rec[`${key}.alpha`] = { dtype: "F32", shape: [], data: new Float32Array([this.alpha]) };
    }
    writeSafetensors(file, rec, { "ss_network_module": "networks.lora", "ss_network_dim": String(this.rank), "ss_network_alpha": String(this.alpha) });
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
