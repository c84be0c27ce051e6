/**
 * An SD 1.x/2.x U-Net (UNet2DConditionModel, no SDXL added conditioning) as an ONNX graph with
 * our model's weights, for timing ONNX Runtime on the same network and the same machine
 * (ort-compare.ts). NCHW float32, static shapes; the nodes are the ones ONNX Runtime's own Stable
 * Diffusion exports lean on: Conv, MatMul + Add, com.microsoft MultiHeadAttention and Gelu,
 * LayerNormalization, GroupNorm as Reshape + InstanceNormalization + affine. The timestep's
 * sinusoid is a graph input (computed on the host: 320 values, not worth a subgraph).
 */
import type { UNet2DConditionModel } from "../../models/unet-2d-condition";
import * as ops from "../../ops";
import { Tensor } from "../../tensor";
import { OnnxGraph } from "./graph";
import { OnnxLayers } from "./layers";

export interface UNetOnnxShapes { batch: number; height: number; width: number; tokens: number }

/** The U-Net's timestep sinusoid for one timestep, float32 (what the graph's `t_sin` input takes), from the op the U-Net uses. */
export async function timestepSinusoid(t: number, dim: number, flipSinToCos: boolean, freqShift: number): Promise<Float32Array> {
  const tt = Tensor.fromArray(Float32Array.of(t), [1]);
  const e = ops.timestepEmbedding(tt, dim, { flipSinToCos, downscaleFreqShift: freqShift });
  try {
    return await e.toFloat32Array();
  } finally {
    e.dispose();
    tt.dispose();
  }
}

export function buildUNetOnnx(unet: UNet2DConditionModel, shape: UNetOnnxShapes): OnnxGraph {
  const cfg = unet.config;
  if (cfg.addition) throw new Error("onnx: SDXL's added conditioning is not exported");
  if (cfg.resnetOutScaleFactor !== 1 || cfg.centerInputSample) throw new Error("onnx: output_scale_factor != 1 and center_input_sample are not exported");
  const g = new OnnxGraph();
  const l = new OnnxLayers(g, unet, shape.batch, cfg.normNumGroups);
  const B = shape.batch, ctxDim = cfg.crossAttentionDim[0], eps = cfg.normEps;

  // time embedding: sinusoid (input) -> linear -> silu -> linear; every resnet takes silu(emb)
  const tSin = g.input("t_sin", [B, cfg.blockOutChannels[0]]);
  const temb = l.silu(l.linear(l.silu(l.linear(tSin, "time_embedding.linear_1")), "time_embedding.linear_2"));
  const ctx = g.input("encoder_hidden_states", [B, shape.tokens, ctxDim]);

  const transformer = (x: string, prefix: string, C: number, H: number, W: number, heads: number, depth: number) => {
    let h = l.groupNorm(x, `${prefix}.norm`, C, H, W, 1e-6);
    h = cfg.useLinearProjection ? l.linear(l.toTokens(h, C, H, W), `${prefix}.proj_in`) : l.toTokens(l.conv(h, `${prefix}.proj_in`), C, H, W);
    for (let d = 0; d < depth; d++) {
      const b = `${prefix}.transformer_blocks.${d}`;
      const n1 = l.layerNorm(h, `${b}.norm1`);
      h = g.node("Add", [h, l.attention(n1, n1, `${b}.attn1`, heads)]);
      h = g.node("Add", [h, l.attention(l.layerNorm(h, `${b}.norm2`), ctx, `${b}.attn2`, heads)]);
      const inner = unet.parameter(`${b}.ff.net.0.proj.weight`)!.spec.shape[0] / 2;
      const [val, gate] = g.nodeN("Split", [l.linear(l.layerNorm(h, `${b}.norm3`), `${b}.ff.net.0.proj`), g.constInts([inner, inner])], { axis: -1 }, 2);
      h = g.node("Add", [h, l.linear(g.node("Mul", [val, g.node("Gelu", [gate], {}, "com.microsoft")]), `${b}.ff.net.2`)]);
    }
    h = cfg.useLinearProjection ? l.toImage(l.linear(h, `${prefix}.proj_out`), C, H, W) : l.conv(l.toImage(h, C, H, W), `${prefix}.proj_out`);
    return g.node("Add", [h, x]);
  };

  const boc = cfg.blockOutChannels, n = boc.length;
  let H = shape.height, W = shape.width;
  let x = l.conv(g.input("sample", [B, cfg.inChannels, H, W]), "conv_in");
  const skips: { name: string; C: number }[] = [{ name: x, C: boc[0] }];
  let C = boc[0];
  for (let i = 0; i < n; i++) {
    const cross = cfg.downBlockTypes[i] === "CrossAttnDownBlock2D";
    for (let j = 0; j < cfg.layersPerBlock[i]; j++) {
      x = l.resnet(x, `down_blocks.${i}.resnets.${j}`, C, boc[i], H, W, eps, temb);
      C = boc[i];
      if (cross) x = transformer(x, `down_blocks.${i}.attentions.${j}`, C, H, W, cfg.numAttentionHeads[i], cfg.transformerLayersPerBlock[i]);
      skips.push({ name: x, C });
    }
    if (i < n - 1) {
      x = l.conv(x, `down_blocks.${i}.downsamplers.0.conv`, 2);
      H /= 2; W /= 2;
      skips.push({ name: x, C });
    }
  }
  x = l.resnet(x, "mid_block.resnets.0", C, C, H, W, eps, temb);
  x = transformer(x, "mid_block.attentions.0", C, H, W, cfg.numAttentionHeads[n - 1], cfg.transformerLayersPerBlock[n - 1]);
  x = l.resnet(x, "mid_block.resnets.1", C, C, H, W, eps, temb);
  const rev = <T>(xs: T[]) => [...xs].reverse();
  const rboc = rev(boc), rHeads = rev(cfg.numAttentionHeads), rDepth = rev(cfg.transformerLayersPerBlock), rLayers = rev(cfg.layersPerBlock);
  for (let i = 0; i < n; i++) {
    const cross = cfg.upBlockTypes[i] === "CrossAttnUpBlock2D";
    for (let j = 0; j < rLayers[i] + 1; j++) {
      const s = skips.pop()!;
      x = l.resnet(g.node("Concat", [x, s.name], { axis: 1 }), `up_blocks.${i}.resnets.${j}`, C + s.C, rboc[i], H, W, eps, temb);
      C = rboc[i];
      if (cross) x = transformer(x, `up_blocks.${i}.attentions.${j}`, C, H, W, rHeads[i], rDepth[i]);
    }
    if (i < n - 1) {
      x = l.upsample(x, `up_blocks.${i}.upsamplers.0`);
      H *= 2; W *= 2;
    }
  }
  const out = g.node("Identity", [l.conv(l.silu(l.groupNorm(x, "conv_norm_out", C, H, W, eps)), "conv_out")]);
  g.output(out, [B, cfg.outChannels, H, W]);
  return g;
}
