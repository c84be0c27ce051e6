// The convolutional building blocks shared by the U-Net and the VAE: ResnetBlock2D, Downsample2D
// and Upsample2D. Activations are NHWC; checkpoint names follow diffusers.
import * as ops from "../../ops";
import { Tensor, tidy } from "../../tensor";
import { Conv2d, GroupNorm, Linear, Module } from "../../nn";
import { emitPlain, type ActivationHook } from "../../nn/attention";

export interface ResnetBlock2DConfig {
  inChannels: number;
  outChannels: number;
  /** Width of the time embedding; null for the VAE's blocks (no time_emb_proj). */
  tembChannels: number | null;
  groups: number;
  eps: number;
  /** The sum is divided by this (diffusers output_scale_factor, 1 in SD). */
  outputScaleFactor?: number;
}

/**
 * diffusers `ResnetBlock2D` (time_embedding_norm "default", SiLU):
 *   h = conv1(silu(norm1 x)) + time_emb_proj(silu temb)[:, None, None, :]
 *   out = (shortcut(x) + conv2(silu(norm2 h))) / output_scale_factor
 * SiLU is fused into the GroupNorms and the skip add into conv2's epilogue. The caller passes
 * silu(temb) once for all blocks (diffusers recomputes the same value in every block).
 * Hook (relative): time_emb_proj.
 */
export class ResnetBlock2D extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly timeEmbProj: Linear | null;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly convShortcut: Conv2d | null;
  readonly outputScaleFactor: number;

  constructor(cfg: ResnetBlock2DConfig) {
    super();
    const { inChannels: cin, outChannels: cout } = cfg;
    this.outputScaleFactor = cfg.outputScaleFactor ?? 1;
    this.norm1 = this.child("norm1", new GroupNorm(cfg.groups, cin, cfg.eps));
    this.conv1 = this.child("conv1", new Conv2d(cin, cout, { kernel: 3, padding: 1 }));
    this.timeEmbProj = cfg.tembChannels != null ? this.child("time_emb_proj", new Linear(cfg.tembChannels, cout)) : null;
    this.norm2 = this.child("norm2", new GroupNorm(cfg.groups, cout, cfg.eps));
    this.conv2 = this.child("conv2", new Conv2d(cout, cout, { kernel: 3, padding: 1 }));
    this.convShortcut = cin !== cout ? this.child("conv_shortcut", new Conv2d(cin, cout, { kernel: 1 })) : null;
  }

  /** x [B, H, W, Cin], tembAct = silu(temb) [B, tembChannels] or null -> [B, H, W, Cout]. */
  forward(x: Tensor, tembAct: Tensor | null, hook?: ActivationHook): Tensor {
    return tidy(() => {
      let h = this.conv1.forward(this.norm1.forward(x, true));
      if (this.timeEmbProj) {
        if (!tembAct) throw new TypeError("ResnetBlock2D: this block needs a time embedding");
        const t = this.timeEmbProj.forward(tembAct);
        emitPlain(hook, "time_emb_proj", t);
        h = ops.add(h, t.reshape([t.shape[0], 1, 1, t.shape[1]]));
      }
      const skip = this.convShortcut ? this.convShortcut.forward(x) : x;
      const out = this.conv2.forward(this.norm2.forward(h, true), skip);
      return this.outputScaleFactor === 1 ? out : ops.div(out, this.outputScaleFactor);
    });
  }
}

/**
 * diffusers `Downsample2D` with use_conv: a 3x3 stride-2 conv named `conv`. padding 0 is the
 * VAE encoder's variant: pad one zero row at the bottom and one zero column at the right, then
 * convolve without padding.
 */
export class Downsample2D extends Module {
  readonly conv: Conv2d;
  constructor(readonly channels: number, readonly outChannels: number, readonly padding: number) {
    super();
    this.conv = this.child("conv", new Conv2d(channels, outChannels, { kernel: 3, stride: 2, padding }));
  }
  /** x [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), Cout] (padding 1) or [B, floor(H/2), floor(W/2), Cout] (padding 0). */
  forward(x: Tensor): Tensor {
    if (this.padding !== 0) return this.conv.forward(x);
    return tidy(() => {
      const [B, H, W, C] = x.shape;
      const opts = { dtype: x.dtype, device: x.device };
      const padW = ops.concat([x, Tensor.zeros([B, H, 1, C], opts)], 2);
      const padded = ops.concat([padW, Tensor.zeros([B, 1, W + 1, C], opts)], 1);
      padW.dispose();
      return this.conv.forward(padded);
    });
  }
}

/** diffusers `Upsample2D` with use_conv: nearest 2x (or to `outputSize`), then a 3x3 conv named `conv`. */
export class Upsample2D extends Module {
  readonly conv: Conv2d;
  constructor(readonly channels: number, readonly outChannels: number) {
    super();
    this.conv = this.child("conv", new Conv2d(channels, outChannels, { kernel: 3, padding: 1 }));
  }
  /**
   * x [B, H, W, C] -> [B, 2H, 2W, Cout], or [B, outH, outW, Cout] when `outputSize` is given. A
   * size of 2n-1 (the skip of an odd-sized level) equals torch's nearest interpolation to that
   * size: source index floor(i * n / (2n-1)) = floor(i / 2) for every i < 2n-1.
   */
  forward(x: Tensor, outputSize?: readonly [number, number]): Tensor {
    return tidy(() => {
      let up = ops.upsampleNearest2x(x);
      if (outputSize && (outputSize[0] !== up.shape[1] || outputSize[1] !== up.shape[2])) {
        const [oh, ow] = outputSize;
        if (oh > up.shape[1] || ow > up.shape[2] || oh < up.shape[1] - 1 || ow < up.shape[2] - 1)
          throw new RangeError(`Upsample2D: output size [${oh},${ow}] is not reachable from [${x.shape[1]},${x.shape[2]}] by nearest 2x`);
        up = ops.slice(ops.slice(up, 1, 0, oh), 2, 0, ow).contiguous();
      }
      return this.conv.forward(up);
    });
  }
}
