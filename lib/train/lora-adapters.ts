/**
 * LoRA adapters for training (Hu et al. 2021): a rank-r branch `scale · (x downᵀ) upᵀ` beside each
 * attention projection of the U-Net (to_q, to_k, to_v, to_out.0: what diffusers'
 * train_text_to_image_lora.py targets), scale = alpha / rank. down starts uniform in
 * ±1/sqrt(in) (PEFT's kaiming-uniform default), up at zero, so training starts from the base model.
 * With textEncoder, the text encoder's attention and MLP layers get adapters too (kohya's lora_te_).
 * Only the adapters train; the models' own weights stay frozen. The result is written as a
 * kohya/A1111 LoRA file (lora_unet_<layer>.lora_down/lora_up/alpha), which loadLora (and the
 * A1111 web UI, stable-diffusion.cpp) read.
 */
import { Tensor } from "../tensor";
import { Linear } from "../nn/layers";
import type { Module } from "../nn/module";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import { writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import { Rng } from "./rng";

/** The projections that get an adapter: the U-Net's attention projections ... */
export const LORA_TARGETS = /\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;
/** ... and, with textEncoder, the text encoder's attention and MLP layers (kohya's lora_te_ targets). */
export const LORA_TE_TARGETS = /^text_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$/;

export interface LoraTrainOptions {
  /** Rank of every adapter. Default 4. */
  rank?: number;
  /** Scale numerator: the branch is multiplied by alpha / rank. Default: rank (scale 1). */
  alpha?: number;
  /** Adapters on the text encoder too (its attention and MLP layers). Default false. */
  textEncoder?: boolean;
}

interface Entry {
  /** "unet" or "te" (the file's lora_unet_ / lora_te_ prefix). */
  part: "unet" | "te";
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

  constructor(unet: UNet2DConditionModel, opts: { rank: number; alpha: number; seed: number; device: string; textEncoder?: Module | null }) {
    this.rank = opts.rank;
    this.alpha = opts.alpha;
    const rng = new Rng(opts.seed, "lora-init");
    const add = (module: Module, part: "unet" | "te", targets: RegExp) => {
      for (const [param, , owner, local] of module.namedParameterSpecs()) {
        const name = param.slice(0, -".weight".length);
        if (local !== "weight" || !(owner instanceof Linear) || !targets.test(name)) continue;
        const bound = 1 / Math.sqrt(owner.inFeatures);
        const d = Float32Array.from({ length: this.rank * owner.inFeatures }, () => (2 * rng.float() - 1) * bound);
        const down = Tensor.fromArray(d, [this.rank, owner.inFeatures], { device: opts.device });
        const up = Tensor.zeros([owner.outFeatures, this.rank], { device: opts.device });
        down.requiresGrad = true;
        up.requiresGrad = true;
        this.entries.push({ part, name, linear: owner, down, up });
      }
    };
    add(unet, "unet", LORA_TARGETS);
    if (this.entries.length === 0) throw new RangeError("LoRA: this U-Net has no attention projections (to_q, to_k, to_v, to_out.0) to adapt");
    if (opts.textEncoder) add(opts.textEncoder, "te", LORA_TE_TARGETS);
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
      const key = `lora_${e.part}_${e.name.replace(/\./g, "_")}`;
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
