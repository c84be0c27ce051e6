// diffusers' attention stack on channels-last activations: Attention (self / cross, optionally
// with the VAE's input GroupNorm), FeedForward (GEGLU), BasicTransformerBlock and
// Transformer2DModel. Tokens are [B, N, C]; an NHWC image [B, H, W, C] is the same buffer viewed
// as [B, H*W, C], so the spatial <-> token moves of diffusers are free reshapes here. Every
// residual add is fused into the epilogue of the linear that precedes it.
import * as ops from "../ops";
import { Tensor, tidy } from "../tensor";
import { Module } from "./module";
import { GroupNorm, LayerNorm, Linear } from "./layers";

// ---- activation hooks ------------------------------------------------------------------

/**
 * Receives named intermediate activations during a forward pass (for tests and debugging).
 * `value()` builds the activation in diffusers' layout on demand (NCHW for images, [B, N, C] for
 * tokens) as a new tensor; it must be called synchronously inside the hook. The tensor belongs to
 * the forward's tidy scope: `keep()` it to hold it past the call. Unused values cost nothing.
 */
export type ActivationHook = (name: string, value: () => Tensor) => void;

/** The hook seen by a child module: names get `prefix` (e.g. "down_blocks.0.") in front. */
export function scopeHook(hook: ActivationHook | undefined, prefix: string): ActivationHook | undefined {
  return hook && ((name, value) => hook(prefix + name, value));
}

/** Emits an NHWC activation [B, H, W, C] as the NCHW tensor diffusers' hooks see. */
export function emitNhwc(hook: ActivationHook | undefined, name: string, x: Tensor | (() => Tensor)): void {
  if (!hook) return;
  hook(name, () => {
    if (x instanceof Tensor) return ops.nhwcToNchw(x);
    const t = x();
    try { return ops.nhwcToNchw(t); } finally { t.dispose(); }
  });
}

/** Emits an activation already in diffusers' layout (tokens, embeddings) as a fresh view or value. */
export function emitPlain(hook: ActivationHook | undefined, name: string, x: Tensor | (() => Tensor)): void {
  if (!hook) return;
  hook(name, x instanceof Tensor ? () => x.reshape(x.shape) : x);
}

// ---- layers ------------------------------------------------------------------------------

/**
 * A 1x1 Conv2d applied to channels-last tokens: exactly a Linear. The checkpoint keeps the
 * [out, in, 1, 1] conv shape; the stored weight is its [out, in] view.
 */
export class PointwiseConv extends Module {
  constructor(readonly inChannels: number, readonly outChannels: number, readonly hasBias = true) {
    super();
    this.param("weight", {
      shape: [outChannels, inChannels, 1, 1],
      fromCheckpoint: (t) => t.reshape([outChannels, inChannels]),
      toCheckpoint: (t) => { const v = t.reshape([outChannels, inChannels, 1, 1]); try { return v.contiguous(); } finally { v.dispose(); } },
    });
    if (hasBias) this.param("bias", { shape: [outChannels] });
  }
  /** x [..., in] -> [..., out]; `residual` is added in the GEMM epilogue. */
  forward(x: Tensor, residual?: Tensor): Tensor {
    return ops.linear(x, this.p("weight"), this.hasBias ? this.p("bias") : null, residual ?? null);
  }
}

export interface AttentionConfig {
  queryDim: number;
  heads: number;
  /** Size of one head; inner width = heads * dimHead. */
  dimHead: number;
  /** Width of the context (encoder hidden states); omitted for self-attention. */
  crossAttentionDim?: number | null;
  /** Bias on to_q / to_k / to_v (diffusers `bias`, false in the U-Net, true in the VAE). */
  qkvBias?: boolean;
  /** Bias on to_out.0 (diffusers `out_bias`, default true). */
  outBias?: boolean;
  /** GroupNorm on the input before the projections (the VAE mid-block attention's `group_norm`). */
  normGroups?: number | null;
  normEps?: number;
  /** diffusers computes scores/softmax in float32 when set; ours always accumulate in float32. */
  upcastAttention?: boolean;
  upcastSoftmax?: boolean;
}

/** diffusers `Attention` with the plain processor: softmax(Q K^T / sqrt(dimHead)) V, then to_out.0. */
export class Attention extends Module {
  readonly heads: number;
  readonly dimHead: number;
  readonly innerDim: number;
  readonly isCross: boolean;
  readonly groupNorm: GroupNorm | null;
  readonly toQ: Linear;
  readonly toK: Linear;
  readonly toV: Linear;
  readonly toOut: Linear;

  constructor(cfg: AttentionConfig) {
    super();
    if (!Number.isInteger(cfg.heads) || cfg.heads < 1) throw new RangeError(`Attention: heads must be a positive integer, got ${cfg.heads}`);
    if (!Number.isInteger(cfg.dimHead) || cfg.dimHead < 1) throw new RangeError(`Attention: dimHead must be a positive integer, got ${cfg.dimHead}`);
    this.heads = cfg.heads;
    this.dimHead = cfg.dimHead;
    this.innerDim = cfg.heads * cfg.dimHead;
    this.isCross = cfg.crossAttentionDim != null;
    const ctxDim = cfg.crossAttentionDim ?? cfg.queryDim;
    const qkvBias = cfg.qkvBias ?? false;
    this.groupNorm = cfg.normGroups != null
      ? this.child("group_norm", new GroupNorm(cfg.normGroups, cfg.queryDim, cfg.normEps ?? 1e-5))
      : null;
    this.toQ = this.child("to_q", new Linear(cfg.queryDim, this.innerDim, qkvBias));
    this.toK = this.child("to_k", new Linear(ctxDim, this.innerDim, qkvBias));
    this.toV = this.child("to_v", new Linear(ctxDim, this.innerDim, qkvBias));
    this.toOut = this.child("to_out.0", new Linear(this.innerDim, cfg.queryDim, cfg.outBias ?? true));
  }

  /**
   * x [B, N, queryDim], context [B, M, crossAttentionDim] (cross-attention only) ->
   * [B, N, queryDim]; `residual` [B, N, queryDim] is added in to_out's epilogue.
   */
  forward(x: Tensor, context?: Tensor | null, residual?: Tensor): Tensor {
    if (this.isCross && !context) throw new TypeError("Attention: cross-attention needs encoder hidden states (context)");
    return tidy(() => {
      const h = this.groupNorm ? this.groupNorm.forward(x) : x;
      const kv = this.isCross ? context! : h;
      const a = ops.attention(this.toQ.forward(h), this.toK.forward(kv), this.toV.forward(kv),
        { heads: this.heads, scale: 1 / Math.sqrt(this.dimHead) });
      return this.toOut.forward(a, residual);
    });
  }
}

/** diffusers `FeedForward` with GEGLU: net.0.proj (dim -> 2*inner), GEGLU, net.2 (inner -> dimOut). */
export class FeedForward extends Module {
  readonly proj: Linear;
  readonly out: Linear;
  constructor(readonly dim: number, opts: { mult?: number; dimOut?: number; activation?: string } = {}) {
    super();
    const activation = opts.activation ?? "geglu";
    if (activation !== "geglu") throw new RangeError(`FeedForward: activation_fn "${activation}" is not supported (supported: "geglu")`);
    const inner = dim * (opts.mult ?? 4);
    this.proj = this.child("net.0.proj", new Linear(dim, inner * 2));
    this.out = this.child("net.2", new Linear(inner, opts.dimOut ?? dim));
  }
  /** x [..., dim] -> [..., dimOut]; `residual` is added in net.2's epilogue. */
  forward(x: Tensor, residual?: Tensor): Tensor {
    return tidy(() => this.out.forward(ops.geglu(this.proj.forward(x)), residual));
  }
}

export interface BasicTransformerBlockConfig {
  dim: number;
  heads: number;
  dimHead: number;
  crossAttentionDim: number;
  upcastAttention?: boolean;
  /** LayerNorm eps (diffusers norm_eps, 1e-5). */
  normEps?: number;
}

/**
 * Pre-LN transformer block: h += attn1(norm1 h); h += attn2(norm2 h, context); h += ff(norm3 h).
 * Hooks (relative names): norm1, attn1, norm2, attn2, norm3, ff — the branch outputs before
 * their residual add, as diffusers' submodule hooks see them.
 */
export class BasicTransformerBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn1: Attention;
  readonly norm2: LayerNorm;
  readonly attn2: Attention;
  readonly norm3: LayerNorm;
  readonly ff: FeedForward;
  constructor(cfg: BasicTransformerBlockConfig) {
    super();
    const eps = cfg.normEps ?? 1e-5;
    const common = { queryDim: cfg.dim, heads: cfg.heads, dimHead: cfg.dimHead, upcastAttention: cfg.upcastAttention };
    this.norm1 = this.child("norm1", new LayerNorm(cfg.dim, eps));
    this.attn1 = this.child("attn1", new Attention(common));
    this.norm2 = this.child("norm2", new LayerNorm(cfg.dim, eps));
    this.attn2 = this.child("attn2", new Attention({ ...common, crossAttentionDim: cfg.crossAttentionDim }));
    this.norm3 = this.child("norm3", new LayerNorm(cfg.dim, eps));
    this.ff = this.child("ff", new FeedForward(cfg.dim));
  }

  /** h [B, N, dim], context [B, M, crossAttentionDim] -> [B, N, dim]. */
  forward(h: Tensor, context: Tensor, hook?: ActivationHook): Tensor {
    return tidy(() => {
      const n1 = this.norm1.forward(h);
      emitPlain(hook, "norm1", n1);
      const h1 = this.attn1.forward(n1, null, h);
      emitPlain(hook, "attn1", () => this.attn1.forward(n1));
      const n2 = this.norm2.forward(h1);
      emitPlain(hook, "norm2", n2);
      const h2 = this.attn2.forward(n2, context, h1);
      emitPlain(hook, "attn2", () => this.attn2.forward(n2, context));
      const n3 = this.norm3.forward(h2);
      emitPlain(hook, "norm3", n3);
      const h3 = this.ff.forward(n3, h2);
      emitPlain(hook, "ff", () => this.ff.forward(n3));
      return h3;
    });
  }
}

export interface Transformer2DConfig {
  inChannels: number;
  heads: number;
  dimHead: number;
  /** Number of BasicTransformerBlocks (diffusers transformer_layers_per_block). */
  numLayers?: number;
  crossAttentionDim: number;
  normGroups?: number;
  /** Linear proj_in/proj_out (SD2.x) instead of 1x1 convolutions (SD1.x). */
  useLinearProjection?: boolean;
  upcastAttention?: boolean;
}

/**
 * diffusers `Transformer2DModel` (continuous input): GroupNorm (eps 1e-6), proj_in, transformer
 * blocks on the H*W tokens, proj_out, plus the input. With NHWC activations a 1x1 conv and a
 * Linear are the same GEMM, so the two projection kinds differ only in their checkpoint shapes.
 * Hooks (relative): norm, proj_in, transformer_blocks.i(.norm1 ...), proj_out.
 */
export class Transformer2DModel extends Module {
  readonly norm: GroupNorm;
  readonly projIn: Linear | PointwiseConv;
  readonly blocks: BasicTransformerBlock[] = [];
  readonly projOut: Linear | PointwiseConv;
  readonly useLinearProjection: boolean;

  constructor(cfg: Transformer2DConfig) {
    super();
    const inner = cfg.heads * cfg.dimHead;
    this.useLinearProjection = cfg.useLinearProjection ?? false;
    this.norm = this.child("norm", new GroupNorm(cfg.normGroups ?? 32, cfg.inChannels, 1e-6));
    this.projIn = this.child("proj_in", this.useLinearProjection ? new Linear(cfg.inChannels, inner) : new PointwiseConv(cfg.inChannels, inner));
    const layers = cfg.numLayers ?? 1;
    for (let i = 0; i < layers; i++) {
      this.blocks.push(this.child(`transformer_blocks.${i}`, new BasicTransformerBlock({
        dim: inner, heads: cfg.heads, dimHead: cfg.dimHead, crossAttentionDim: cfg.crossAttentionDim, upcastAttention: cfg.upcastAttention,
      })));
    }
    this.projOut = this.child("proj_out", this.useLinearProjection ? new Linear(inner, cfg.inChannels) : new PointwiseConv(inner, cfg.inChannels));
  }

  /** x [B, H, W, C] (NHWC), context [B, M, D] -> [B, H, W, C]. */
  forward(x: Tensor, context: Tensor, hook?: ActivationHook): Tensor {
    const [B, H, W, C] = x.shape;
    return tidy(() => {
      const tokens = x.reshape([B, H * W, C]);
      const n = this.norm.forward(tokens);
      emitNhwc(hook, "norm", () => n.reshape([B, H, W, C]));
      let h = this.projIn.forward(n);
      // a conv proj_in's output is an image to diffusers' hooks; a Linear's is tokens
      const emitProj = (name: string, t: () => Tensor) =>
        this.useLinearProjection ? emitPlain(hook, name, t) : emitNhwc(hook, name, () => { const v = t(); try { return v.reshape([B, H, W, v.shape[2]]); } finally { v.dispose(); } });
      const hIn = h;
      emitProj("proj_in", () => hIn.reshape(hIn.shape));
      this.blocks.forEach((block, i) => {
        const next = block.forward(h, context, scopeHook(hook, `transformer_blocks.${i}.`));
        if (h !== hIn) h.dispose();
        h = next;
        emitPlain(hook, `transformer_blocks.${i}`, h);
      });
      const hLast = h;
      emitProj("proj_out", () => this.projOut.forward(hLast));
      return this.projOut.forward(h, tokens).reshape([B, H, W, C]);
    });
  }
}
