/**
 * ControlNet checkpoints in the original layout (lllyasviel's ControlNet code; the A1111 extension's
 * .safetensors), keys with or without a "control_model." prefix: the encoder half has the U-Net's
 * original names (input_blocks, middle_block, time_embed: single-file.ts's mapping), the control
 * image's conv stack is input_hint_block (convs at 0, 2, ..., 14 with SiLU between), the zero convs
 * are zero_convs.i.0 and middle_block_out.0.
 */
import type { HostStateDictSource } from "../io/state-dict";
import { renameStateDict } from "../io/state-dict";
import { singleFileLinks, UNET_PREFIX } from "./single-file";
import type { ControlNetModel } from "./controlnet";

export const CONTROL_PREFIX = "control_model.";

/** diffusers ControlNet parameter -> its original name (without the control_model. prefix). */
export function controlNetKeyMap(net: ControlNetModel): Map<string, string> {
  const keys = new Set(net.namedParameterSpecs().map(([n]) => n));
  const map = new Map<string, string>();
  // the U-Net mapping from the ControlNet's config read as a U-Net's (it carries the mirrored up path)
  for (const l of singleFileLinks({ unet: { ...(net.configJson as Record<string, unknown>), _class_name: "UNet2DConditionModel" } }))
    if (l.component === "unet" && keys.has(l.key)) map.set(l.key, l.source.slice(UNET_PREFIX.length));
  const both = (from: string, to: string) => {
    for (const s of ["weight", "bias"]) if (keys.has(`${from}.${s}`)) map.set(`${from}.${s}`, `${to}.${s}`);
  };
  both("controlnet_cond_embedding.conv_in", "input_hint_block.0");
  let k = 0;
  while (keys.has(`controlnet_cond_embedding.blocks.${k}.weight`)) {
    both(`controlnet_cond_embedding.blocks.${k}`, `input_hint_block.${2 * k + 2}`);
    k++;
  }
  both("controlnet_cond_embedding.conv_out", `input_hint_block.${2 * k + 2}`);
  for (let i = 0; keys.has(`controlnet_down_blocks.${i}.weight`); i++) both(`controlnet_down_blocks.${i}`, `zero_convs.${i}.0`);
  both("controlnet_mid_block", "middle_block_out.0");
  return map;
}

/** Whether a checkpoint looks like an original ControlNet (input_hint_block and zero_convs). */
export function isControlNetSingleFile(keys: readonly string[]): boolean {
  const strip = (k: string) => (k.startsWith(CONTROL_PREFIX) ? k.slice(CONTROL_PREFIX.length) : k);
  return keys.some((k) => strip(k).startsWith("input_hint_block.")) && keys.some((k) => strip(k).startsWith("zero_convs."));
}

/** The checkpoint seen with diffusers names for `net` (keys it does not know are left out). */
export function controlNetSingleFileSource(source: HostStateDictSource, net: ControlNetModel): HostStateDictSource {
  const toDiffusers = new Map([...controlNetKeyMap(net)].map(([d, o]) => [o, d] as [string, string]));
  return renameStateDict(source, (k) => toDiffusers.get(k.startsWith(CONTROL_PREFIX) ? k.slice(CONTROL_PREFIX.length) : k) ?? null);
}
