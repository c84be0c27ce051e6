/**
 * LoRA file formats: which tensors of a LoRA file patch which layer. A layer's patch is
 * ΔW = (alpha / rank) · up @ down (Hu et al. 2021, "LoRA"), with down [rank, in(, kh, kw)] and
 * up [out, rank(, 1, 1)]; without an alpha, alpha = rank.
 *
 * Key styles read:
 *  - kohya / A1111 (sd-scripts): `lora_unet_<layer>.lora_down.weight`, `.lora_up.weight`, `.alpha`,
 *    and `lora_te_<layer>` for the text encoder (SDXL: `lora_te1_` / `lora_te2_`); <layer> is the module path with "." written "_",
 *    in diffusers names or in the original (LDM) U-Net names;
 *  - diffusers / PEFT: `unet.<layer>.lora_A.weight` / `.lora_B.weight` (also `.lora.down/.up`,
 *    and the older attention-processor `...processor.to_q_lora.down.weight` form), and
 *    `text_encoder.<layer>...` (SDXL: `text_encoder_2.`), with an optional `<layer>.alpha`.
 * LyCORIS variants (LoHa, LoKr, Tucker mid weights, DoRA scales) are refused by name.
 */

import type { SafetensorsTensorInput } from "../io/safetensors";

export type LoraComponent = "unet" | "textEncoder" | "textEncoder2";

/** One patched layer: a component's module name as the file spells it, and its tensors' keys. */
export interface LoraLayerKeys {
  component: LoraComponent;
  /** kohya: the underscored path after `lora_unet_` / `lora_te_`; diffusers: the dotted module path. */
  name: string;
  /** Whether `name` is dotted (diffusers/PEFT) or underscored (kohya). */
  dotted: boolean;
  down?: string;
  up?: string;
  alpha?: string;
}

const KOHYA = /^lora_(unet|te|te1|te2)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const PEFT = /^(unet|text_encoder|text_encoder_2)\.(.+?)\.(lora_A|lora_B)(?:\.default)?\.weight$/;
const DIFFUSERS = /^(unet|text_encoder|text_encoder_2)\.(.+?)\.lora\.(down|up)\.weight$/;
const PROCESSOR = /^unet\.(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;
const TEXT_LINEAR_LAYER = /^(text_encoder|text_encoder_2)\.(.+)\.(q_proj|k_proj|v_proj|out_proj)\.lora_linear_layer\.(down|up)\.weight$/;
const DOTTED_ALPHA = /^(unet|text_encoder|text_encoder_2)\.(.+)\.alpha$/;
const LYCORIS = /\.(hada_w[12]_[ab]|hada_t[12]|lokr_w[12](_[ab])?|lokr_t2|lora_mid\.weight|dora_scale)$|^lora_unet_.*\.(on_input|diff|diff_b)$/;

export class UnsupportedLoraError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsupportedLoraError";
  }
}

/**
 * Groups a LoRA file's keys into layers. Keys that belong to no known style are returned in
 * `ignored` (metadata-like tensors some trainers add); LyCORIS keys throw UnsupportedLoraError.
 */
export function parseLoraKeys(keys: readonly string[]): { layers: LoraLayerKeys[]; ignored: string[] } {
  const layers = new Map<string, LoraLayerKeys>();
  const ignored: string[] = [];
  const layer = (component: LoraComponent, name: string, dotted: boolean): LoraLayerKeys => {
    const id = `${component}|${dotted ? "." : "_"}|${name}`;
    let l = layers.get(id);
    if (!l) layers.set(id, (l = { component, name, dotted }));
    return l;
  };
  const component = (s: string): LoraComponent => (s === "unet" ? "unet" : s === "text_encoder_2" || s === "te2" ? "textEncoder2" : "textEncoder");
  const set = (l: LoraLayerKeys, part: "down" | "up" | "alpha", key: string) => {
    if (l[part] !== undefined) throw new UnsupportedLoraError(`LoRA: two ${part} tensors for ${l.name} (${l[part]} and ${key})`);
    l[part] = key;
  };
  const lycoris = keys.filter((k) => LYCORIS.test(k));
  if (lycoris.length)
    throw new UnsupportedLoraError(`LoRA: this is a LyCORIS file (LoHa/LoKr/Tucker/DoRA: ${lycoris[0]}${lycoris.length > 1 ? `, ... ${lycoris.length} keys` : ""}); only plain LoRA (up @ down) is supported`);
  for (const k of keys) {
    let m: RegExpExecArray | null;
    if ((m = KOHYA.exec(k))) {
      const l = layer(component(m[1]), m[2], false);
      set(l, m[3] === "alpha" ? "alpha" : m[3].startsWith("lora_down") ? "down" : "up", k);
    } else if ((m = PEFT.exec(k))) {
      set(layer(component(m[1]), m[2], true), m[3] === "lora_A" ? "down" : "up", k);
    } else if ((m = DIFFUSERS.exec(k))) {
      set(layer(component(m[1]), m[2], true), m[3] as "down" | "up", k);
    } else if ((m = PROCESSOR.exec(k))) {
      set(layer("unet", `${m[1]}.${m[2] === "to_out" ? "to_out.0" : m[2]}`, true), m[3] as "down" | "up", k);
    } else if ((m = TEXT_LINEAR_LAYER.exec(k))) {
      set(layer(component(m[1]), `${m[2]}.${m[3]}`, true), m[4] as "down" | "up", k);
    } else if ((m = DOTTED_ALPHA.exec(k))) {
      set(layer(component(m[1]), m[2], true), "alpha", k);
    } else {
      ignored.push(k);
    }
  }
  for (const l of layers.values())
    if (l.down === undefined || l.up === undefined)
      throw new UnsupportedLoraError(`LoRA: layer ${l.name} has ${l.down ? "a down" : l.up ? "an up" : "only an alpha"} tensor but no ${l.down ? "up" : "down"} tensor`);
  return { layers: [...layers.values()], ignored };
}

/** One layer's tensors as a kohya file holds them: `lora_<prefix>_<name, "." as "_">` down, up and alpha (float32). */
export function kohyaLayerEntries(prefix: string, name: string, down: { shape: readonly number[]; data: Float32Array },
  up: { shape: readonly number[]; data: Float32Array }, alpha: number): Record<string, SafetensorsTensorInput> {
  const key = `lora_${prefix}_${name.replace(/\./g, "_")}`;
  return {
    [`${key}.lora_down.weight`]: { dtype: "F32", shape: [...down.shape], data: down.data },
    [`${key}.lora_up.weight`]: { dtype: "F32", shape: [...up.shape], data: up.data },
    [`${key}.alpha`]: { dtype: "F32", shape: [], data: new Float32Array([alpha]) },
  };
}

/** The sd-scripts metadata a kohya LoRA file carries (network rank and alpha; LoCon's conv rank and alpha). */
export function kohyaMetadata(rank: number, alpha: number, conv?: { rank: number; alpha: number }): Record<string, string> {
  return {
    ss_network_module: "networks.lora", ss_network_dim: String(rank), ss_network_alpha: String(alpha),
    ...(conv ? { ss_network_args: JSON.stringify({ conv_dim: String(conv.rank), conv_alpha: String(conv.alpha) }) } : {}),
  };
}
