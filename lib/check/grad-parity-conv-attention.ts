// Training parity cases for conv2d and attention (CUDA kernels of native/cuda/conv2d_backward.cu
// and attention_backward.cu against the CPU ones). The gradient-parity runner draws float32
// inputs of `shapes` (requiring grad, except the indices in `noGrad`), backprops
// sum(run(xs) * fixed random weights) on the CPU and on the GPU, and compares every input's
// gradient. The geometry covers what the models train with (SD U-Net / VAE convolutions,
// self- and cross-attention head sizes 40/64/80/160) and the kernels' edge cases (odd sizes,
// strides, dilation, padding beyond the kernel's reach, odd head sizes, Dv != D, causal with
// Nq != Nk, -inf masks and a fully masked row, strided q/k/v views, 4096 tokens).
import * as ops from "../ops";
import type { Tensor } from "../tensor";
import type { GradCase } from "./grad-parity-cases";

type Pair = [number, number];
interface ConvGeom {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
}

function convCases(): GradCase[] {
  const c: GradCase[] = [];
  // x [N,H,W,C], w [K,R,S,C] (+ bias [K] when `bias`)
  const conv = (name: string, x: number[], w: number[], g: ConvGeom, bias: boolean, tolScale?: number) =>
    c.push({
      name: `conv2d ${name}`,
      shapes: bias ? [x, w, [w[0]]] : [x, w],
      run: ([xt, wt, bt]) => ops.conv2d(xt, wt, { ...g, bias: bias ? bt : null }),
      ...(tolScale ? { tolScale } : {}),
    });
  conv("3x3 pad 1 stride 1, batch 2, bias", [2, 16, 16, 32], [48, 3, 3, 32], { padding: [1, 1] }, true);
  conv("3x3 stride 2 pad 1 (U-Net downsample), odd size", [1, 17, 15, 16], [24, 3, 3, 16], { stride: [2, 2], padding: [1, 1] }, true);
  conv("3x3 stride 2 pad 0 (VAE downsample)", [2, 16, 16, 8], [8, 3, 3, 8], { stride: [2, 2] }, true);
  conv("1x1 shortcut, bias", [2, 8, 8, 64], [32, 1, 1, 64], {}, true);
  conv("1x1 stride 2 (dx has holes)", [1, 9, 9, 6], [5, 1, 1, 6], { stride: [2, 2] }, false);
  conv("odd C=3 K=5 7x7, batch 2, bias", [2, 7, 7, 3], [5, 3, 3, 3], { padding: [1, 1] }, true);
  conv("odd C=3 K=5 9x9, 5x5 kernel pad 2", [1, 9, 9, 3], [5, 5, 5, 3], { padding: [2, 2] }, true);
  conv("dilation 2 pad 2", [1, 20, 20, 3], [8, 3, 3, 3], { padding: [2, 2], dilation: [2, 2] }, false);
  conv("3x3 pad 0", [1, 9, 9, 4], [6, 3, 3, 4], {}, true);
  conv("pad 3 > dilation*(R-1) = 2", [1, 9, 7, 4], [5, 3, 3, 4], { padding: [3, 3] }, true);
  conv("anisotropic: 2x3 kernel, stride [1,2], pad [4,2], dilation [3,1]", [1, 6, 9, 2], [3, 2, 3, 2], { stride: [1, 2], padding: [4, 2], dilation: [3, 1] }, false);
  conv("conv_in 4 channels", [1, 16, 16, 4], [32, 3, 3, 4], { padding: [1, 1] }, true);
  conv("3x3 64 channels 64x64, batch 2 (long dw reduction, split)", [2, 64, 64, 64], [64, 3, 3, 64], { padding: [1, 1] }, true, 3);
  conv("3x3 320 channels 32x32 (SD width)", [1, 32, 32, 320], [320, 3, 3, 320], { padding: [1, 1] }, true, 3);
  c.push({
    name: "conv2d 3x3 with residual and bias",
    shapes: [[2, 8, 8, 16], [24, 3, 3, 16], [24], [2, 8, 8, 24]],
    run: ([x, w, b, r]) => ops.conv2d(x, w, { padding: 1, bias: b, residual: r }),
  });
  return c;
}

function attentionCases(): GradCase[] {
  const c: GradCase[] = [];
  // q [B,Nq,H*D], k [B,Nk,H*D], v [B,Nk,H*Dv]
  const att = (name: string, B: number, Nq: number, Nk: number, H: number, D: number,
    o: { Dv?: number; causal?: boolean; tolScale?: number } = {}) => {
    const Dv = o.Dv ?? D;
    c.push({
      name: `attention ${name} (B${B} Nq${Nq} Nk${Nk} H${H} D${D}${Dv !== D ? ` Dv${Dv}` : ""}${o.causal ? " causal" : ""})`,
      shapes: [[B, Nq, H * D], [B, Nk, H * D], [B, Nk, H * Dv]],
      run: ([q, k, v]) => ops.attention(q, k, v, { heads: H, causal: o.causal }),
      ...(o.tolScale ? { tolScale: o.tolScale } : {}),
    });
  };
  att("self d40", 2, 64, 64, 8, 40);
  att("self d64", 2, 64, 64, 8, 64);
  att("self d80", 2, 64, 64, 8, 80);
  att("self d160", 2, 64, 64, 8, 160);
  att("self d160, 65 tokens (partial tile)", 1, 65, 65, 2, 160);
  att("odd head size 1", 2, 33, 33, 2, 1);
  att("odd head size 3", 1, 70, 70, 2, 3);
  att("odd head size 17, 3 query tiles", 2, 130, 70, 2, 17);
  att("Dv != D", 1, 40, 50, 2, 24, { Dv: 40 });
  att("Dv != D, wide v (two column chunks)", 1, 33, 17, 1, 40, { Dv: 170 });
  att("head size 200 (two column chunks)", 1, 20, 30, 1, 200);
  att("cross-attention, 77 keys", 2, 256, 77, 8, 40);
  att("cross-attention, 77 keys, d80", 1, 64, 77, 8, 80);
  att("causal, Nq = Nk (CLIP)", 2, 77, 77, 2, 32, { causal: true });
  att("causal, Nq > Nk (early rows see no key)", 1, 70, 40, 2, 8, { causal: true });
  att("causal, Nq < Nk", 1, 40, 100, 2, 16, { causal: true });
  att("4096 tokens, one head (VAE mid-block)", 1, 4096, 4096, 1, 40, { tolScale: 4 });

  // Masks: built from a no-grad input m so the runner's random draw still gives -inf entries:
  // log(clamp(m + 0.7, 0, 1)) is -inf where m <= -0.7 (about a quarter), else finite <= 0.
  const hardMask = (m: Tensor): Tensor => ops.log(ops.clamp(ops.add(m, 0.7), 0, 1));
  c.push({
    name: "attention mask [B,1,Nq,Nk] broadcast over heads, -inf entries and a fully masked row (B2 Nq9 Nk77 H2 D40)",
    shapes: [[2, 9, 2 * 40], [2, 77, 2 * 40], [2, 77, 2 * 40], [2, 1, 9, 77]],
    noGrad: [3],
    run: ([q, k, v, m]) => {
      // row 2 of every batch item: -inf everywhere (log(clamp(-|m|, 0, 1)) = log 0)
      const top = ops.slice(m, 2, 0, 2), row = ops.slice(m, 2, 2, 3), rest = ops.slice(m, 2, 3);
      const full = ops.concat([hardMask(top), ops.log(ops.clamp(ops.neg(ops.abs(row)), 0, 1)), hardMask(rest)], 2);
      return ops.attention(q, k, v, { heads: 2, mask: full });
    },
  });
  c.push({
    name: "attention key-padding mask [B,1,1,Nk] with -inf entries, causal (B2 Nq66 Nk66 H2 D12 Dv20)",
    shapes: [[2, 66, 2 * 12], [2, 66, 2 * 12], [2, 66, 2 * 20], [2, 1, 1, 66]],
    noGrad: [3],
    run: ([q, k, v, m]) => ops.attention(q, k, v, { heads: 2, causal: true, mask: hardMask(m) }),
  });
  c.push({
    name: "attention finite mask [Nq,Nk] (broadcast over batch and heads), cross 77 keys",
    shapes: [[2, 20, 4 * 16], [2, 77, 4 * 16], [2, 77, 4 * 16], [20, 77]],
    noGrad: [3],
    run: ([q, k, v, m]) => ops.attention(q, k, v, { heads: 4, mask: m }),
  });
  // q, k, v as strided views of one packed projection [B, N, 3*H*D] (row pitch 3*H*D)
  c.push({
    name: "attention on views of a packed qkv (row stride 3*H*D), B2 N50 H4 D40",
    shapes: [[2, 50, 3 * 4 * 40]],
    run: ([qkv]) => {
      const C = 4 * 40;
      return ops.attention(ops.slice(qkv, 2, 0, C), ops.slice(qkv, 2, C, 2 * C), ops.slice(qkv, 2, 2 * C, 3 * C), { heads: 4 });
    },
  });
  return c;
}

/** The conv2d and attention training cases for the CUDA-vs-CPU gradient parity runner. */
export function convAttentionGradCases(): GradCase[] {
  return [...convCases(), ...attentionCases()];
}
