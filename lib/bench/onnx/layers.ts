/**
 * ONNX nodes for the layers our SD models share (NCHW float32, static shapes), reading the weights
 * of one of our modules by their checkpoint (diffusers) names. Used by the U-Net and VAE-decoder
 * exports (unet-onnx.ts, vae-onnx.ts).
 */
import type { Module } from "../../nn/module";
import { noGrad } from "../../autograd";
import { tensorBytes } from "../../io/module-weights";
import type { OnnxGraph } from "./graph";

export class OnnxLayers {
  constructor(readonly g: OnnxGraph, private readonly module: Module, private readonly batch: number, private readonly groups: number) {}

  has(name: string): boolean {
    return this.module.parameter(name) !== null;
  }

  /** A parameter as an initializer (`transpose`: a [out, in] Linear weight as [in, out] for MatMul). */
  param(name: string, transpose = false): { name: string; dims: number[] } {
    const p = this.module.parameter(name);
    if (!p) throw new Error(`onnx: ${this.module.constructor.name} has no parameter ${name}`);
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
    return { name: this.g.weight(name, outDims, read), dims: outDims };
  }

  silu(x: string): string {
    return this.g.node("Mul", [x, this.g.node("Sigmoid", [x])]);
  }

  linear(x: string, prefix: string): string {
    const y = this.g.node("MatMul", [x, this.param(`${prefix}.weight`, true).name]);
    return this.has(`${prefix}.bias`) ? this.g.node("Add", [y, this.param(`${prefix}.bias`).name]) : y;
  }

  conv(x: string, prefix: string, stride = 1): string {
    const w = this.param(`${prefix}.weight`);
    const k = w.dims[2], pad = (k - 1) / 2;
    return this.g.node("Conv", [x, w.name, this.param(`${prefix}.bias`).name], { kernel_shape: [k, k], pads: [pad, pad, pad, pad], strides: [stride, stride] });
  }

  /** GroupNorm as torch.onnx writes it: Reshape [B, G, -1] + InstanceNormalization + per-channel affine. */
  groupNorm(x: string, prefix: string, C: number, H: number, W: number, eps: number): string {
    const g = this.g, B = this.batch, G = this.groups;
    const r = g.node("Reshape", [x, g.constInts([B, G, (C / G) * H * W])]);
    const n = g.node("InstanceNormalization", [r, g.constFloats(new Array(G).fill(1)), g.constFloats(new Array(G).fill(0))], { epsilon: { f: eps } });
    const back = g.node("Reshape", [n, g.constInts([B, C, H, W])]);
    const gamma = g.node("Reshape", [this.param(`${prefix}.weight`).name, g.constInts([C, 1, 1])]);
    const beta = g.node("Reshape", [this.param(`${prefix}.bias`).name, g.constInts([C, 1, 1])]);
    return g.node("Add", [g.node("Mul", [back, gamma]), beta]);
  }

  layerNorm(x: string, prefix: string): string {
    return this.g.node("LayerNormalization", [x, this.param(`${prefix}.weight`).name, this.param(`${prefix}.bias`).name], { axis: -1, epsilon: { f: 1e-5 } });
  }

  /** ResnetBlock2D; `temb` (silu(time embedding), [B, T]) is projected and added after conv1 when given. */
  resnet(x: string, prefix: string, cin: number, cout: number, H: number, W: number, eps: number, temb: string | null): string {
    const g = this.g;
    let h = this.conv(this.silu(this.groupNorm(x, `${prefix}.norm1`, cin, H, W, eps)), `${prefix}.conv1`);
    if (temb) h = g.node("Add", [h, g.node("Reshape", [this.linear(temb, `${prefix}.time_emb_proj`), g.constInts([this.batch, cout, 1, 1])])]);
    h = this.conv(this.silu(this.groupNorm(h, `${prefix}.norm2`, cout, H, W, eps)), `${prefix}.conv2`);
    const skip = this.has(`${prefix}.conv_shortcut.weight`) ? this.conv(x, `${prefix}.conv_shortcut`) : x;
    return g.node("Add", [skip, h]);
  }

  /** Attention (to_q/k/v, ORT's fused MultiHeadAttention, to_out.0) on [B, N, C] tokens. */
  attention(x: string, kv: string, prefix: string, heads: number): string {
    const q = this.linear(x, `${prefix}.to_q`), k = this.linear(kv, `${prefix}.to_k`), v = this.linear(kv, `${prefix}.to_v`);
    return this.linear(this.g.node("MultiHeadAttention", [q, k, v], { num_heads: heads }, "com.microsoft"), `${prefix}.to_out.0`);
  }

  /** [B, C, H, W] <-> [B, H·W, C] */
  toTokens(x: string, C: number, H: number, W: number): string {
    return this.g.node("Reshape", [this.g.node("Transpose", [x], { perm: [0, 2, 3, 1] }), this.g.constInts([this.batch, H * W, C])]);
  }
  toImage(x: string, C: number, H: number, W: number): string {
    return this.g.node("Transpose", [this.g.node("Reshape", [x, this.g.constInts([this.batch, H, W, C])])], { perm: [0, 3, 1, 2] });
  }

  /** Nearest 2x upsampling + conv (Upsample2D). */
  upsample(x: string, prefix: string): string {
    const up = this.g.node("Resize", [x, "", this.g.constFloats([1, 1, 2, 2])], { mode: "nearest", coordinate_transformation_mode: "asymmetric", nearest_mode: "floor" });
    return this.conv(up, `${prefix}.conv`);
  }
}
