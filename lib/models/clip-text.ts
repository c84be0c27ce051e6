/**
 * CLIP text encoder (transformers' CLIPTextModel / CLIPTextModelWithProjection), built from its
 * config.json, with transformers' state-dict names:
 *
 *   text_model.embeddings.{token_embedding,position_embedding}.weight
 *   text_model.encoder.layers.<i>.{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp.fc1,mlp.fc2}.*
 *   text_model.final_layer_norm.*        text_projection.weight (WithProjection only)
 *
 * Math per layer (pre-LN): h += out_proj(causal_attention(ln1(h))); h += fc2(act(fc1(ln2(h)))).
 * Attention is the fused native kernel with causal=true and no padding mask: the Stable Diffusion
 * pipelines call the encoder without an attention mask, so padding tokens are attended.
 */
import * as ops from "../ops";
import { Tensor, tidy, type DType, type DeviceName } from "../tensor";
import { Module, type StateDictSource } from "../nn/module";
import { Embedding, LayerNorm, Linear } from "../nn/layers";
import { filterStateDict } from "../io/state-dict";

export type CLIPHiddenAct = "quick_gelu" | "gelu";

export interface CLIPTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  hiddenAct: CLIPHiddenAct;
  layerNormEps: number;
  eosTokenId: number;
  /** Output size of text_projection; null for CLIPTextModel (no projection). */
  projectionDim: number | null;
}

// transformers' CLIPTextConfig defaults, used for keys a config.json leaves out.
const DEFAULTS = {
  vocab_size: 49408, hidden_size: 512, intermediate_size: 2048, projection_dim: 512, num_hidden_layers: 12,
  num_attention_heads: 8, max_position_embeddings: 77, hidden_act: "quick_gelu", layer_norm_eps: 1e-5, eos_token_id: 49407,
} as const;

const SUPPORTED_ACTS: readonly CLIPHiddenAct[] = ["quick_gelu", "gelu"];
const ARCHITECTURES = ["CLIPTextModel", "CLIPTextModelWithProjection"];

export interface CLIPTextConfigOptions {
  /** Builds text_projection; by default true when `architectures` names CLIPTextModelWithProjection. */
  withProjection?: boolean;
}

/** Parses a transformers CLIP text config.json (or a CLIPModel config's `text_config`). */
export function parseCLIPTextConfig(json: Record<string, unknown>, opts: CLIPTextConfigOptions = {}): CLIPTextConfig {
  let cfg = json;
  const modelType = json["model_type"];
  if (modelType === "clip" && json["text_config"] && typeof json["text_config"] === "object") {
    cfg = { ...(json["text_config"] as Record<string, unknown>) };
    if (cfg["projection_dim"] === undefined && json["projection_dim"] !== undefined) cfg["projection_dim"] = json["projection_dim"];
  } else if (modelType !== undefined && modelType !== "clip_text_model") {
    throw new Error(`CLIP text config: model_type must be "clip_text_model" (or "clip" with a text_config), got ${JSON.stringify(modelType)}`);
  }
  const int = (key: keyof typeof DEFAULTS, min = 1): number => {
    const v = cfg[key] ?? DEFAULTS[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v < min)
      throw new Error(`CLIP text config: ${key} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return v;
  };
  const act = cfg["hidden_act"] ?? DEFAULTS.hidden_act;
  if (typeof act !== "string" || !SUPPORTED_ACTS.includes(act as CLIPHiddenAct))
    throw new Error(`CLIP text config: hidden_act ${JSON.stringify(act)} is not supported (allowed: ${SUPPORTED_ACTS.join(", ")})`);
  const eps = cfg["layer_norm_eps"] ?? DEFAULTS.layer_norm_eps;
  if (typeof eps !== "number" || !(eps > 0)) throw new Error(`CLIP text config: layer_norm_eps must be a positive number, got ${JSON.stringify(eps)}`);
  const eos = cfg["eos_token_id"] ?? DEFAULTS.eos_token_id;
  if (typeof eos !== "number" || !Number.isInteger(eos) || eos < 0)
    throw new Error(`CLIP text config: eos_token_id must be a non-negative integer, got ${JSON.stringify(eos)}`);

  const archs = cfg["architectures"] ?? json["architectures"];
  let archWithProjection = false;
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length !== 1 || !ARCHITECTURES.includes(archs[0] as string)) {
      if (modelType !== "clip")
        throw new Error(`CLIP text config: architectures must be ["CLIPTextModel"] or ["CLIPTextModelWithProjection"], got ${JSON.stringify(archs)}`);
    } else {
      archWithProjection = archs[0] === "CLIPTextModelWithProjection";
    }
  }
  const withProjection = opts.withProjection ?? archWithProjection;

  const hiddenSize = int("hidden_size"), heads = int("num_attention_heads");
  if (hiddenSize % heads !== 0)
    throw new Error(`CLIP text config: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${heads}`);
  return {
    vocabSize: int("vocab_size"),
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numHiddenLayers: int("num_hidden_layers"),
    numAttentionHeads: heads,
    maxPositionEmbeddings: int("max_position_embeddings"),
    hiddenAct: act as CLIPHiddenAct,
    layerNormEps: eps,
    eosTokenId: eos,
    projectionDim: withProjection ? int("projection_dim") : null,
  };
}

// ---- modules (names follow transformers so state-dict keys line up)

class ModuleList<M extends Module> extends Module {
  readonly items: M[];
  constructor(items: M[]) {
    super();
    this.items = items;
    items.forEach((m, i) => this.child(String(i), m));
  }
}

class CLIPAttention extends Module {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly outProj: Linear;
  constructor(dim: number, readonly heads: number) {
    super();
    this.qProj = this.child("q_proj", new Linear(dim, dim));
    this.kProj = this.child("k_proj", new Linear(dim, dim));
    this.vProj = this.child("v_proj", new Linear(dim, dim));
    this.outProj = this.child("out_proj", new Linear(dim, dim));
  }
  /** x [B,N,D] -> x + out_proj(attention), causal. Scale is head_dim^-0.5, the attention default. */
  forward(x: Tensor, residual: Tensor): Tensor {
    const a = ops.attention(this.qProj.forward(x), this.kProj.forward(x), this.vProj.forward(x), { heads: this.heads, causal: true });
    return this.outProj.forward(a, residual);
  }
}

class CLIPMLP extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(dim: number, inner: number, readonly act: CLIPHiddenAct) {
    super();
    this.fc1 = this.child("fc1", new Linear(dim, inner));
    this.fc2 = this.child("fc2", new Linear(inner, dim));
  }
  forward(x: Tensor, residual: Tensor): Tensor {
    const h = this.fc1.forward(x);
    return this.fc2.forward(this.act === "quick_gelu" ? ops.quickGelu(h) : ops.gelu(h), residual);
  }
}

class CLIPEncoderLayer extends Module {
  readonly selfAttn: CLIPAttention;
  readonly layerNorm1: LayerNorm;
  readonly mlp: CLIPMLP;
  readonly layerNorm2: LayerNorm;
  constructor(cfg: CLIPTextConfig) {
    super();
    this.selfAttn = this.child("self_attn", new CLIPAttention(cfg.hiddenSize, cfg.numAttentionHeads));
    this.layerNorm1 = this.child("layer_norm1", new LayerNorm(cfg.hiddenSize, cfg.layerNormEps));
    this.mlp = this.child("mlp", new CLIPMLP(cfg.hiddenSize, cfg.intermediateSize, cfg.hiddenAct));
    this.layerNorm2 = this.child("layer_norm2", new LayerNorm(cfg.hiddenSize, cfg.layerNormEps));
  }
  forward(h: Tensor): Tensor {
    const h1 = this.selfAttn.forward(this.layerNorm1.forward(h), h);
    return this.mlp.forward(this.layerNorm2.forward(h1), h1);
  }
}

class CLIPTextEmbeddings extends Module {
  readonly tokenEmbedding: Embedding;
  readonly positionEmbedding: Embedding;
  constructor(cfg: CLIPTextConfig) {
    super();
    this.tokenEmbedding = this.child("token_embedding", new Embedding(cfg.vocabSize, cfg.hiddenSize));
    this.positionEmbedding = this.child("position_embedding", new Embedding(cfg.maxPositionEmbeddings, cfg.hiddenSize));
  }
  /** ids [B,N] -> token embedding + position embedding of positions 0..N-1: [B,N,D]. */
  forward(ids: Tensor): Tensor {
    const n = ids.shape[1];
    return ops.add(this.tokenEmbedding.forward(ids), ops.slice(this.positionEmbedding.weight, 0, 0, n));
  }
}

class CLIPEncoder extends Module {
  readonly layers: ModuleList<CLIPEncoderLayer>;
  constructor(cfg: CLIPTextConfig) {
    super();
    this.layers = this.child("layers", new ModuleList(Array.from({ length: cfg.numHiddenLayers }, () => new CLIPEncoderLayer(cfg))));
  }
}

class CLIPTextTransformer extends Module {
  readonly embeddings: CLIPTextEmbeddings;
  readonly encoder: CLIPEncoder;
  readonly finalLayerNorm: LayerNorm;
  constructor(cfg: CLIPTextConfig) {
    super();
    this.embeddings = this.child("embeddings", new CLIPTextEmbeddings(cfg));
    this.encoder = this.child("encoder", new CLIPEncoder(cfg));
    this.finalLayerNorm = this.child("final_layer_norm", new LayerNorm(cfg.hiddenSize, cfg.layerNormEps));
  }
}

export interface CLIPTextForwardOptions {
  /**
   * As diffusers' `clip_skip`: lastHiddenState = final_layer_norm(hidden_states[-(k+1)]), the
   * output of layer L-k. 0 (or undefined) is the last layer. `pooled` always comes from the full model.
   */
  clipSkip?: number;
  /** Also return hiddenStates: [embeddings, output of layer 1, ..., output of layer L] (before final_layer_norm). */
  outputHiddenStates?: boolean;
}

export interface CLIPTextOutput {
  /** [B,N,D]: final_layer_norm of the last layer's output (or of layer L-clipSkip). */
  lastHiddenState: Tensor;
  /** [B,D]: final_layer_norm(last layer) at each row's EOS position (transformers' pooler_output). */
  pooled: Tensor;
  /** [B,projection_dim]: text_projection(pooled), WithProjection models only (transformers' text_embeds). */
  textEmbeds?: Tensor;
  /** L+1 tensors [B,N,D] when outputHiddenStates. */
  hiddenStates?: Tensor[];
}

/** Keys transformers checkpoints may hold that are buffers, not parameters. */
const BUFFER_KEYS = /(^|\.)position_ids$/;

export class CLIPTextModel extends Module {
  readonly config: CLIPTextConfig;
  readonly textModel: CLIPTextTransformer;
  readonly textProjection: Linear | null;
  /** The config.json this model was built from (fromConfig), null when built from a parsed config. */
  readonly configJson: Readonly<Record<string, unknown>> | null;

  constructor(config: CLIPTextConfig, configJson: Record<string, unknown> | null = null) {
    super();
    this.config = config;
    this.configJson = configJson && Object.freeze({ ...configJson });
    this.textModel = this.child("text_model", new CLIPTextTransformer(config));
    this.textProjection = config.projectionDim !== null
      ? this.child("text_projection", new Linear(config.hiddenSize, config.projectionDim, false))
      : null;
  }

  /** Builds the model from a parsed config.json object (weights not loaded). */
  static fromConfig(json: Record<string, unknown>, opts: CLIPTextConfigOptions = {}): CLIPTextModel {
    return new CLIPTextModel(parseCLIPTextConfig(json, opts), json);
  }

  /** As Module.loadStateDict, ignoring the `position_ids` buffer older transformers checkpoints carry. */
  override loadStateDict(source: StateDictSource, opts: { dtype?: DType; device?: DeviceName; prefix?: string; strict?: boolean } = {}): void {
    super.loadStateDict(filterStateDict(source, (k) => !BUFFER_KEYS.test(k)), opts);
  }

  private checkIds(op: string, ids: Tensor): void {
    if (!(ids instanceof Tensor)) throw new TypeError(`CLIPTextModel.${op}: ids must be a Tensor`);
    if (ids.dtype !== "int32" && ids.dtype !== "int64")
      throw new TypeError(`CLIPTextModel.${op}: ids must be int32 or int64, got ${ids.dtype}`);
    if (ids.ndim !== 2 || ids.shape[0] < 1 || ids.shape[1] < 1)
      throw new RangeError(`CLIPTextModel.${op}: ids must be [batch, tokens], got [${ids.shape.join(",")}]`);
    if (ids.shape[1] > this.config.maxPositionEmbeddings)
      throw new RangeError(`CLIPTextModel.${op}: ${ids.shape[1]} tokens exceed max_position_embeddings ${this.config.maxPositionEmbeddings}`);
  }

  /**
   * hiddenStates[k] of forward() (the embeddings for k = 0, else layer k's output, before
   * final_layer_norm) computed alone: the layers after k do not run and nothing past it is
   * recorded, for callers that use no other output (SDXL's first encoder).
   */
  hiddenState(ids: Tensor, k: number): Tensor {
    this.checkIds("hiddenState", ids);
    const layers = this.textModel.encoder.layers.items;
    if (!Number.isInteger(k) || k < 0 || k > layers.length)
      throw new RangeError(`CLIPTextModel.hiddenState: k must be an integer in [0, ${layers.length}], got ${k}`);
    return tidy(() => layers.slice(0, k).reduce((h, layer) => layer.forward(h), this.textModel.embeddings.forward(ids)));
  }

  /** ids int32/int64 [B,N] on the CPU (N <= max_position_embeddings, usually 77). */
  forward(ids: Tensor, opts: CLIPTextForwardOptions = {}): CLIPTextOutput {
    const cfg = this.config;
    this.checkIds("forward", ids);
    const L = cfg.numHiddenLayers;
    const skip = opts.clipSkip ?? 0;
    if (!Number.isInteger(skip) || skip < 0 || skip >= L)
      throw new RangeError(`CLIPTextModel.forward: clipSkip must be an integer in [0, ${L - 1}], got ${opts.clipSkip}`);

    return tidy(() => {
      const tm = this.textModel;
      let h = tm.embeddings.forward(ids);
      const hidden: Tensor[] = [h];
      for (const layer of tm.encoder.layers.items) {
        h = layer.forward(h);
        hidden.push(h);
      }
      const last = tm.finalLayerNorm.forward(h);
      const lastHiddenState = skip === 0 ? last : tm.finalLayerNorm.forward(hidden[L - skip]);
      const pooled = this.gatherEos(last, ids);
      const out: CLIPTextOutput = { lastHiddenState, pooled };
      if (this.textProjection) out.textEmbeds = this.textProjection.forward(pooled);
      if (opts.outputHiddenStates) out.hiddenStates = hidden;
      return out;
    });
  }

  /**
   * Rows of x [B,N,D] at each sequence's EOS position -> [B,D]. transformers picks, per row, the
   * first position of the largest id when eos_token_id == 2 (legacy configs, where EOS 49407 is the
   * largest id), else the first position holding eos_token_id (position 0 when there is none).
   * Computed on the device as a one-hot [B,1,N] @ x, so ids are never read back.
   */
  private gatherEos(x: Tensor, ids: Tensor): Tensor {
    const [B, N] = ids.shape;
    const idsF = ids.to("cpu", "float32");
    const target = this.config.eosTokenId === 2 ? ops.max(idsF, 1, true) : this.config.eosTokenId;
    // eq = 1 where id == target else 0: ids are integers, so (id - target)^2 >= 1 off target.
    const eq = ops.add(ops.maximum(ops.neg(ops.square(ops.sub(idsF, target))), -1), 1);
    // First hit: score = eq*N - position is largest at the first position with eq = 1.
    const positions = Tensor.fromArray(Float32Array.from({ length: N }, (_, i) => i), [1, N]);
    const score = ops.sub(ops.mul(eq, N), positions);
    const oneHot = ops.add(ops.maximum(ops.sub(score, ops.max(score, 1, true)), -1), 1);
    const sel = oneHot.reshape([B, 1, N]).to(x.device, x.dtype);
    return ops.matmul(sel, x).reshape([B, x.shape[2]]);
  }
}
