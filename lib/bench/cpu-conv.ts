// conv2d cases (NHWC, batch 2 for the U-Net, 1 for the VAE decoder): 3x3 and 1x1 at SD1.5 shapes.
import * as ops from "../ops";
import { randn, type ConvCase } from "./cpu-common";
import type { Prepared } from "./cpu-ops";

export function convCases(quick: boolean): ConvCase[] {
  const unet: [number, number][] = quick ? [[32, 640], [16, 1280]] : [[64, 320], [32, 640], [16, 1280], [8, 1280]];
  const out: ConvCase[] = [];
  for (const R of [3, 1])
    for (const [H, C] of unet) out.push({ group: "conv", name: `${R}x${R} 2x${H}x${H} ${C}->${C}`, N: 2, H, W: H, C, K: C, R });
  // VAE decoder resolutions; only 3x3 (its 1x1s are the rare channel-changing shortcuts)
  if (!quick)
    for (const [H, C] of [[512, 128], [256, 256]]) out.push({ group: "conv", name: `3x3 1x${H}x${H} ${C}->${C} (vae)`, N: 1, H, W: H, C, K: C, R: 3 });
  // the same shapes with bfloat16 operands
  return [...out, ...out.map((c): ConvCase => ({ ...c, name: `${c.name} bf16`, dtype: "bfloat16" }))];
}

export function prepareConv(c: ConvCase): Prepared {
  const x = randn([c.N, c.H, c.W, c.C], 3, c.dtype), w = randn([c.K, c.R, c.R, c.C], 4, c.dtype);
  const padding = (c.R - 1) / 2;
  return { inputs: [x, w], fn: () => ops.conv2d(x, w, { padding }) };
}
