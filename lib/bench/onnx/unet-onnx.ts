/**
 * An SD 1.x/2.x U-Net (UNet2DConditionModel, no SDXL added conditioning) as an ONNX graph with
 * our model's weights, for timing ONNX Runtime on the same network and the same machine
 * (ort-unet.ts). NCHW float32, static shapes; the nodes are the ones ONNX Runtime's own Stable
 * Diffusion exports lean on: Conv, MatMul + Add, com.microsoft MultiHeadAttention and Gelu,
 * LayerNormalization, GroupNorm as Reshape + InstanceNormalization + affine. The timestep's
 * sinusoid is a graph input (computed on the host: 320 values, not worth a subgraph).
 */
import type { UNet2DConditionModel } from "../../models/unet-2d-condition";
import { noGrad } from "../../autograd";
import { tensorBytes } from "../../io/module-weights";
import { OnnxGraph } from "./graph";

export interface UNetOnnxShapes { batch: number; height: number; width: number; tokens: number }

/** diffusers' get_timestep_embedding for one timestep, float32 (what the graph's `t_sin` input takes). */
export function timestepSinusoid(t: number, dim: number, flipSinToCos: boolean, freqShift: number): Float32Array {
  const half = dim / 2, out = new Float32Array(dim);
  for (let i = 0; i < half; i++) {
    const arg = Math.fround(t * Math.fround(Math.exp((-Math.log(10000) * i) / (half - freqShift))));
    const [s, c] = [Math.sin(arg), Math.cos(arg)];
    out[i] = flipSinToCos ? c : s;
    out[half + i] = flipSinToCos ? s : c;
  }
  return out;
}

export function buildUNetOnnx(unet: UNet2DConditionModel, shape: UNetOnnxShapes): OnnxGraph {
  const cfg = unet.config;
  if (cfg.addition) throw new Error("onnx: SDXL's added conditioning is not exported");
  if (cfg.resnetOutScaleFactor !== 1 || cfg.centerInputSample) throw new Error("onnx: output_scale_factor != 1 and center_input_sample are not exported");
  const g = new OnnxGraph();
  const B = shape.batch, ctxDim = cfg.crossAttentionDim[0];
  const param = (name: string, transpose = false): { name: string; dims: number[] } => {
    const p = unet.parameter(name);
    if (!p) throw new Error(`onnx: the U-Net has no parameter ${name}`);
    const dims = [...p.spec.shape];
    const read = async () => {
      const ck = noGrad(() => (p.spec.toCheckpoint ? p.spec.toCheckpoint(p.tensor) : p.tensor.contiguous()));
      try {
        const b = await tensorBytes(ck, "float32");
        if (!transpose) return b;
        const [rows, cols] = dims, src = new Float32Array(b.buffer, b.byteOffset, rows * cols), out = new Float32Array(rows * cols);
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c];
        return new Uint8Array(out.buffer);
      } finally {
        ck.dispose();
      }
    };
    const outDims = transpose ? [dims[1], dims[0]] : dims;
    return { name: g.weight(name, outDims, read), dims: outDims };
  };
  const has = (name: string) => unet.parameter(name) !== null;

  const silu = (x: string) => g.node("Mul", [x, g.node("Sigmoid", [x])]);
  const linear = (x: string, prefix: string, bias = true) => {
    const y = g.node("MatMul", [x, param(`${prefix}.weight`, true).name]);
    return bias ? g.node("Add", [y, param(`${prefix}.bias`).name]) : y;
  };
  const conv = (x: string, prefix: string, stride = 1) => {
    const w = param(`${prefix}.weight`);
    const k = w.dims[2], pad = (k - 1) / 2;
    return g.node("Conv", [x, w.name, param(`${prefix}.bias`).name], { kernel_shape: [k, k], pads: [pad, pad, pad, pad], strides: [stride, stride] });
  };
  const groupNorm = (x: string, prefix: string, C: number, H: number, W: number, eps: number) => {
    const G = cfg.normNumGroups;
    const r = g.node("Reshape", [x, g.constInts([B, G, (C / G) * H * W])]);
    const n = g.node("InstanceNormalization", [r, g.constFloats(new Array(G).fill(1)), g.constFloats(new Array(G).fill(0))], { epsilon: { f: eps } });
    const back = g.node("Reshape", [n, g.constInts([B, C, H, W])]);
    const gamma = g.node("Reshape", [param(`${prefix}.weight`).name, g.constInts([C, 1, 1])]);
    const beta = g.node("Reshape", [param(`${prefix}.bias`).name, g.constInts([C, 1, 1])]);
    return g.node("Add", [g.node("Mul", [back, gamma]), beta]);
  };
  const layerNorm = (x: string, prefix: string) =>
    g.node("LayerNormalization", [x, param(`${prefix}.weight`).name, param(`${prefix}.bias`).name], { axis: -1, epsilon: { f: 1e-5 } });

  // time embedding: sinusoid (input) -> linear -> silu -> linear; every resnet takes silu(emb)
  const tSin = g.input("t_sin", [B, cfg.blockOutChannels[0]]);
  const temb = silu(linear(silu(linear(tSin, "time_embedding.linear_1")), "time_embedding.linear_2"));
  const ctx = g.input("encoder_hidden_states", [B, shape.tokens, ctxDim]);

  const resnet = (x: string, prefix: string, cin: number, cout: number, H: number, W: number) => {
    let h = conv(silu(groupNorm(x, `${prefix}.norm1`, cin, H, W, cfg.normEps)), `${prefix}.conv1`);
    const tp = g.node("Reshape", [linear(temb, `${prefix}.time_emb_proj`), g.constInts([B, cout, 1, 1])]);
    h = g.node("Add", [h, tp]);
    h = conv(silu(groupNorm(h, `${prefix}.norm2`, cout, H, W, cfg.normEps)), `${prefix}.conv2`);
    const skip = has(`${prefix}.conv_shortcut.weight`) ? conv(x, `${prefix}.conv_shortcut`) : x;
    return g.node("Add", [skip, h]);
  };
  const attention = (x: string, kv: string, prefix: string, heads: number) =>
    linear(g.node("MultiHeadAttention", [linear(x, `${prefix}.to_q`, false), linear(kv, `${prefix}.to_k`, false), linear(kv, `${prefix}.to_v`, false)],
      { num_heads: heads }, "com.microsoft"), `${prefix}.to_out.0`);
  const transformer = (x: string, prefix: string, C: number, H: number, W: number, heads: number, depth: number) => {
    const N = H * W;
    let h = groupNorm(x, `${prefix}.norm`, C, H, W, 1e-6);
    const toTokens = (t: string) => g.node("Reshape", [g.node("Transpose", [t], { perm: [0, 2, 3, 1] }), g.constInts([B, N, C])]);
    const toImage = (t: string) => g.node("Transpose", [g.node("Reshape", [t, g.constInts([B, H, W, C])])], { perm: [0, 3, 1, 2] });
    h = cfg.useLinearProjection ? linear(toTokens(h), `${prefix}.proj_in`) : toTokens(conv(h, `${prefix}.proj_in`));
    for (let d = 0; d < depth; d++) {
      const b = `${prefix}.transformer_blocks.${d}`;
      const n1 = layerNorm(h, `${b}.norm1`);
      h = g.node("Add", [h, attention(n1, n1, `${b}.attn1`, heads)]);
      h = g.node("Add", [h, attention(layerNorm(h, `${b}.norm2`), ctx, `${b}.attn2`, heads)]);
      const inner = unet.parameter(`${b}.ff.net.0.proj.weight`)!.spec.shape[0] / 2;
      const [val, gate] = g.nodeN("Split", [linear(layerNorm(h, `${b}.norm3`), `${b}.ff.net.0.proj`), g.constInts([inner, inner])], { axis: -1 }, 2);
      h = g.node("Add", [h, linear(g.node("Mul", [val, g.node("Gelu", [gate], {}, "com.microsoft")]), `${b}.ff.net.2`)]);
    }
    h = cfg.useLinearProjection ? toImage(linear(h, `${prefix}.proj_out`)) : conv(toImage(h), `${prefix}.proj_out`);
    return g.node("Add", [h, x]);
  };

  const boc = cfg.blockOutChannels, n = boc.length;
  let H = shape.height, W = shape.width;
  let x = conv(g.input("sample", [B, cfg.inChannels, H, W]), "conv_in");
  const skips: { name: string; C: number }[] = [{ name: x, C: boc[0] }];
  let C = boc[0];
  for (let i = 0; i < n; i++) {
    const cross = cfg.downBlockTypes[i] === "CrossAttnDownBlock2D";
    for (let j = 0; j < cfg.layersPerBlock[i]; j++) {
      x = resnet(x, `down_blocks.${i}.resnets.${j}`, C, boc[i], H, W);
      C = boc[i];
      if (cross) x = transformer(x, `down_blocks.${i}.attentions.${j}`, C, H, W, cfg.numAttentionHeads[i], cfg.transformerLayersPerBlock[i]);
      skips.push({ name: x, C });
    }
    if (i < n - 1) {
      x = conv(x, `down_blocks.${i}.downsamplers.0.conv`, 2);
      H /= 2; W /= 2;
      skips.push({ name: x, C });
    }
  }
  x = resnet(x, "mid_block.resnets.0", C, C, H, W);
  x = transformer(x, "mid_block.attentions.0", C, H, W, cfg.numAttentionHeads[n - 1], cfg.transformerLayersPerBlock[n - 1]);
  x = resnet(x, "mid_block.resnets.1", C, C, H, W);
  const rev = [...boc].reverse(), revHeads = [...cfg.numAttentionHeads].reverse(), revDepth = [...cfg.transformerLayersPerBlock].reverse();
  const revLayers = [...cfg.layersPerBlock].reverse();
  for (let i = 0; i < n; i++) {
    const cross = cfg.upBlockTypes[i] === "CrossAttnUpBlock2D";
    for (let j = 0; j < revLayers[i] + 1; j++) {
      const s = skips.pop()!;
      x = resnet(g.node("Concat", [x, s.name], { axis: 1 }), `up_blocks.${i}.resnets.${j}`, C + s.C, rev[i], H, W);
      C = rev[i];
      if (cross) x = transformer(x, `up_blocks.${i}.attentions.${j}`, C, H, W, revHeads[i], revDepth[i]);
    }
    if (i < n - 1) {
      x = g.node("Resize", [x, "", g.constFloats([1, 1, 2, 2])], { mode: "nearest", coordinate_transformation_mode: "asymmetric", nearest_mode: "floor" });
      H *= 2; W *= 2;
      x = conv(x, `up_blocks.${i}.upsamplers.0.conv`);
    }
  }
  const out = conv(silu(groupNorm(x, "conv_norm_out", C, H, W, cfg.normEps)), "conv_out");
  const named = g.node("Identity", [out]);
  g.output(named, [B, cfg.outChannels, H, W]);
  return g;
}
