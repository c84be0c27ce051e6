/**
 * An SD VAE decoder (AutoencoderKL.decode: post_quant_conv, then the decoder) as an ONNX graph
 * with our model's weights, for the ONNX Runtime comparison (ort-compare.ts). NCHW float32, static
 * shapes; the mid block's single-head attention runs as ORT's MultiHeadAttention.
 */
import type { AutoencoderKL } from "../../models/autoencoder-kl";
import { OnnxGraph } from "./graph";
import { OnnxLayers } from "./layers";

export function buildVaeDecoderOnnx(vae: AutoencoderKL, shape: { batch: number; height: number; width: number }): OnnxGraph {
  const cfg = vae.config;
  const g = new OnnxGraph();
  const l = new OnnxLayers(g, vae, shape.batch, cfg.normNumGroups);
  const B = shape.batch, eps = 1e-6, L = cfg.latentChannels;
  let H = shape.height, W = shape.width;
  let x = g.input("latents", [B, L, H, W]);
  if (l.has("post_quant_conv.weight")) x = l.conv(x, "post_quant_conv");
  const rboc = [...cfg.blockOutChannels].reverse();
  let C = rboc[0];
  x = l.conv(x, "decoder.conv_in");
  x = l.resnet(x, "decoder.mid_block.resnets.0", C, C, H, W, eps, null);
  if (cfg.midBlockAddAttention) {
    const p = "decoder.mid_block.attentions.0";
    const tokens = l.toTokens(l.groupNorm(x, `${p}.group_norm`, C, H, W, eps), C, H, W);
    x = g.node("Add", [l.toImage(l.attention(tokens, tokens, p, 1), C, H, W), x]);
  }
  x = l.resnet(x, "decoder.mid_block.resnets.1", C, C, H, W, eps, null);
  rboc.forEach((ch, i) => {
    for (let j = 0; j < cfg.layersPerBlock + 1; j++) {
      x = l.resnet(x, `decoder.up_blocks.${i}.resnets.${j}`, C, ch, H, W, eps, null);
      C = ch;
    }
    if (i < rboc.length - 1) {
      x = l.upsample(x, `decoder.up_blocks.${i}.upsamplers.0`);
      H *= 2; W *= 2;
    }
  });
  const out = g.node("Identity", [l.conv(l.silu(l.groupNorm(x, "decoder.conv_norm_out", C, H, W, eps)), "decoder.conv_out")]);
  g.output(out, [B, cfg.outChannels, H, W]);
  return g;
}
