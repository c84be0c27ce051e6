// Basic layers over lib/ops. Activations are channels-last: Conv2d takes NHWC and stores its
// weight as OHWI (converted once from PyTorch's OIHW at load).
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { Module } from "./module";

/** A low-rank side branch on a Linear (LoRA, Hu et al. 2021): y += scale · (x downᵀ) upᵀ. Not a parameter of the module. */
export interface LinearAdapter {
  /** [rank, in] */
  down: Tensor;
  /** [out, rank] */
  up: Tensor;
  scale: number;
}

/**
 * A low-rank side branch on a Conv2d (LoCon): y += scale · conv1x1(conv(x, down), up), the first
 * conv with the layer's kernel, stride and padding. Not a parameter of the module.
 */
export interface ConvAdapter {
  /** [rank, kh, kw, in] (OHWI, as Conv2d stores its weight) */
  down: Tensor;
  /** [out, rank] */
  up: Tensor;
  scale: number;
}

export class Linear extends Module {
  /** A trained low-rank branch over the frozen weight (lib/train/lora-adapters.ts); null: none. */
  adapter: LinearAdapter | null = null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, readonly hasBias = true) {
    super();
    this.param("weight", { shape: [outFeatures, inFeatures] });
    if (hasBias) this.param("bias", { shape: [outFeatures] });
  }
  /** x [..., in] -> [..., out]; `residual` is added in the GEMM epilogue. */
  forward(x: Tensor, residual?: Tensor): Tensor {
    const base = ops.linear(x, this.p("weight"), this.hasBias ? this.p("bias") : null, residual ?? null);
    const a = this.adapter;
    if (!a) return base;
    // the branch in x's dtype (a recorded cast under mixed precision), added in the second GEMM's epilogue
    const cast = (t: Tensor) => (t.dtype === x.dtype ? t : t.to(x.device, x.dtype));
    return ops.linear(ops.mul(ops.linear(x, cast(a.down)), a.scale), cast(a.up), null, base);
  }
}

export interface Conv2dConfig { kernel: number; stride?: number; padding?: number; bias?: boolean }

export class Conv2d extends Module {
  readonly stride: number;
  readonly padding: number;
  readonly hasBias: boolean;
  /**
   * Whether bfloat16 calls may take the CPU's Winograd path (ops.conv2d's algo "auto"). Its extra
   * rounding (~2.5x the direct bf16 conv's error) is fine in a U-Net but compounds through a VAE
   * decoder into the pixels, so AutoencoderKL turns it off. float32 is unaffected (F(4,3) there
   * is within 1e-5).
   */
  winogradBf16 = true;
  /** A trained low-rank branch over the frozen weight (lib/train/lora-adapters.ts); null: none. */
  adapter: ConvAdapter | null = null;
  /** Wrap-around padding instead of zeros (A1111's "Tiling"): the image continues across its edges. */
  circular = false;
  readonly kernel: number;
  constructor(readonly inChannels: number, readonly outChannels: number, cfg: Conv2dConfig) {
    super();
    this.stride = cfg.stride ?? 1;
    this.padding = cfg.padding ?? 0;
    this.hasBias = cfg.bias ?? true;
    this.kernel = cfg.kernel;
    this.param("weight", {
      shape: [outChannels, inChannels, cfg.kernel, cfg.kernel],
      fromCheckpoint: (t) => ops.convWeightToOHWI(t),
      toCheckpoint: (t) => { const v = t.permute([0, 3, 1, 2]); try { return v.contiguous(); } finally { v.dispose(); } },
    });
    if (this.hasBias) this.param("bias", { shape: [outChannels] });
  }
  /** x [N,H,W,C] -> [N,P,Q,K]; `residual` [N,P,Q,K] is added in the epilogue. */
  forward(x: Tensor, residual?: Tensor): Tensor {
    const algo = !this.winogradBf16 && x.dtype === "bfloat16" ? "direct" : "auto";
    const wrap = this.circular && this.padding > 0;
    const input = wrap ? circularPad(x, this.padding) : x, padding = wrap ? 0 : this.padding;
    const base = ops.conv2d(input, this.p("weight"), { stride: this.stride, padding, bias: this.hasBias ? this.p("bias") : null, residual, algo });
    const a = this.adapter;
    if (!a) return base;
    // the branch in x's dtype; channels-last, so the 1x1 up conv is a GEMM whose epilogue adds the base
    const cast = (t: Tensor) => (t.dtype === x.dtype ? t : t.to(x.device, x.dtype));
    const h = ops.conv2d(input, cast(a.down), { stride: this.stride, padding, algo });
    return ops.linear(ops.mul(h, a.scale), cast(a.up), null, base);
  }
}

/** x [N,H,W,C] with p rows and columns of wrap-around padding on each side (p at most H and W). */
export function circularPad(x: Tensor, p: number): Tensor {
  const [, H, W] = x.shape;
  if (p > H || p > W) throw new RangeError(`circular padding of ${p} needs an input of at least ${p}x${p}, got ${H}x${W}`);
  const w = ops.concat([ops.slice(x, 2, W - p, W), x, ops.slice(x, 2, 0, p)], 2);
  return ops.concat([ops.slice(w, 1, H - p, H), w, ops.slice(w, 1, 0, p)], 1);
}

export class GroupNorm extends Module {
  constructor(readonly groups: number, readonly channels: number, readonly eps = 1e-5, readonly affine = true) {
    super();
    if (channels % groups) throw new RangeError(`GroupNorm: ${groups} groups do not divide ${channels} channels`);
    if (affine) {
      this.param("weight", { shape: [channels] });
      this.param("bias", { shape: [channels] });
    }
  }
  /** x [N, ..., C]; `silu` fuses the activation that usually follows. */
  forward(x: Tensor, silu = false): Tensor {
    return ops.groupNorm(x, this.groups, { weight: this.affine ? this.p("weight") : null, bias: this.affine ? this.p("bias") : null, eps: this.eps, silu });
  }
}

export class LayerNorm extends Module {
  constructor(readonly dim: number, readonly eps = 1e-5, readonly affine = true) {
    super();
    if (affine) {
      this.param("weight", { shape: [dim] });
      this.param("bias", { shape: [dim] });
    }
  }
  forward(x: Tensor): Tensor {
    return ops.layerNorm(x, { weight: this.affine ? this.p("weight") : null, bias: this.affine ? this.p("bias") : null, eps: this.eps });
  }
}

export class Embedding extends Module {
  private rows: number;
  constructor(count: number, readonly dim: number) {
    super();
    this.rows = count;
    this.param("weight", { shape: [count, dim] });
  }
  /** Number of rows (ids). */
  get count(): number {
    return this.rows;
  }
  /** Appends rows [n, dim] (cast to the table's dtype and device); returns the id of the first. */
  append(rows: Tensor): number {
    if (rows.ndim !== 2 || rows.shape[1] !== this.dim) throw new RangeError(`Embedding.append: rows must be [n, ${this.dim}], got [${rows.shape.join(",")}]`);
    const w = this.p("weight");
    const grown = tidy(() => ops.concat([w, rows.dtype === w.dtype && rows.device === w.device ? rows : rows.to(w.device, w.dtype)], 0));
    const first = this.rows;
    this.rows += rows.shape[0];
    this.resizeParameter("weight", { shape: [this.rows, this.dim] }, grown).dispose();
    return first;
  }
  /**
   * Rows [n, dim] looked up for ids count .. count + n - 1 without being part of the table:
   * textual-inversion training trains them (they get the gradients) while the table stays frozen.
   */
  extraRows: Tensor | null = null;
  /** ids int32/int64 [...] (on the CPU) -> [..., dim] */
  forward(ids: Tensor): Tensor {
    const w = this.p("weight"), x = this.extraRows;
    if (!x) return ops.embedding(ids, w);
    // Each position takes its row from the table or from the extra rows, by a 0/1 mask: the exact
    // values of a lookup in [table; extra], without copying the table (or building its dense
    // gradient) every training step.
    return tidy(() => {
      const n = this.rows, idsF = ids.to("cpu", "float32");
      const inTable = ops.minimum(idsF, n - 1).to("cpu", ids.dtype), inExtra = ops.maximum(ops.sub(idsF, n), 0).to("cpu", ids.dtype);
      const mask = ops.clamp(ops.sub(idsF, n - 1), 0, 1).reshape([...ids.shape, 1]).to(w.device, w.dtype);
      const extra = ops.embedding(inExtra, x.dtype === w.dtype ? x : x.to(x.device, w.dtype));
      return ops.add(ops.mul(ops.embedding(inTable, w), ops.sub(1, mask)), ops.mul(extra, mask));
    });
  }
  /** The table itself (e.g. position embeddings read whole). */
  get weight(): Tensor { return this.p("weight"); }
}
