/**
 * CLIPTextModel: golden parity with transformers on the tiny reference models (tiny-sd's
 * CLIPTextModel, tiny-sdxl's CLIPTextModelWithProjection with exact GELU), a naive JS reference on
 * a small random model (EOS rules, clip skip), and loading errors on small temp folders.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Tensor } from "../../lib/tensor";
import { StateDictError } from "../../lib/nn/module";
import { writeSafetensors, type SafetensorsTensorInput } from "../../lib/io/safetensors";
import { ModelFolder } from "../../lib/io/model-folder";
import { LazyStateDict, type HostTensor } from "../../lib/io/state-dict";
import { CLIPTextModel, parseCLIPTextConfig } from "../../lib/models/clip-text";
import { CLIPTokenizer } from "../../lib/tokenizers/clip";
import { describeIfReference, referencePath } from "../helpers/reference";
import { SafetensorsFile as RefFile } from "../helpers/read-safetensors";

// ---- helpers

/** max |got - ref| and the README bound 1e-4 * max(1, max|ref|). */
function compare(got: Float32Array, ref: ArrayLike<number>, label: string): number {
  expect(got.length).toBe(ref.length);
  let err = 0, scale = 1;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(got[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  const bound = 1e-4 * scale;
  if (!(err <= bound)) throw new Error(`${label}: max |diff| ${err.toExponential(3)} > ${bound.toExponential(3)}`);
  return err;
}

function idsTensor(rows: number[][] | BigInt64Array, shape?: number[]): Tensor {
  if (rows instanceof BigInt64Array) return Tensor.fromArray(rows, shape!);
  return Tensor.fromArray(BigInt64Array.from(rows.flat(), (v) => BigInt(v)), [rows.length, rows[0].length]);
}

async function read(t: Tensor): Promise<Float32Array> {
  return t.toFloat32Array();
}

function disposeOut(o: { lastHiddenState: Tensor; pooled: Tensor; textEmbeds?: Tensor; hiddenStates?: Tensor[] }): void {
  o.lastHiddenState.dispose();
  o.pooled.dispose();
  o.textEmbeds?.dispose();
  o.hiddenStates?.forEach((t) => t.dispose());
}

function loadFolderModel(folder: string, component: string): CLIPTextModel {
  const f = ModelFolder.open(folder);
  const model = CLIPTextModel.fromConfig(f.config(component));
  const w = f.weights(component);
  try {
    model.loadStateDict(w);
  } finally {
    w.close();
  }
  return model;
}

// ---- golden parity

describeIfReference("CLIPTextModel vs transformers: tiny-sd text_encoder", () => {
  let model: CLIPTextModel;
  let ref: RefFile;
  const worst: Record<string, number> = {};

  beforeAll(() => {
    model = loadFolderModel(referencePath("models/tiny-sd"), "text_encoder");
    ref = RefFile.read(referencePath("cases/text_encoder.safetensors"));
  });
  afterAll(() => {
    model?.dispose();
    process.stderr.write(`[clip-text] worst |diff| tiny-sd: ${JSON.stringify(worst)}\n`);
  });

  test("config and parameter count", () => {
    expect(model.config).toMatchObject({ hiddenSize: 32, numHiddenLayers: 3, numAttentionHeads: 4, hiddenAct: "quick_gelu", eosTokenId: 2, projectionDim: null });
    expect(model.parameterCount()).toBe(1_609_216);
  });

  test("embeddings, every hidden state, last_hidden_state and pooler_output", async () => {
    const ids = idsTensor(ref.get("input_ids").data as BigInt64Array, [3, 77]);
    const out = model.forward(ids, { outputHiddenStates: true });
    try {
      expect(out.lastHiddenState.shape).toEqual([3, 77, 32]);
      expect(out.pooled.shape).toEqual([3, 32]);
      expect(out.hiddenStates!.length).toBe(4);
      const hs = ref.get("hidden_states").data as Float32Array;
      const per = 3 * 77 * 32;
      worst.embeddings = compare(await read(out.hiddenStates![0]), ref.get("embeddings").data as Float32Array, "embeddings");
      for (let i = 0; i < 4; i++)
        worst[`hidden_states[${i}]`] = compare(await read(out.hiddenStates![i]), hs.subarray(i * per, (i + 1) * per), `hidden_states[${i}]`);
      worst.last_hidden_state = compare(await read(out.lastHiddenState), ref.get("last_hidden_state").data as Float32Array, "last_hidden_state");
      worst.pooler_output = compare(await read(out.pooled), ref.get("pooler_output").data as Float32Array, "pooler_output");
    } finally {
      disposeOut(out);
      ids.dispose();
    }
  });

  test("int32 ids give the same result as int64", async () => {
    const ids64 = ref.get("input_ids").data as BigInt64Array;
    const ids = Tensor.fromArray(Int32Array.from(ids64, Number), [3, 77]);
    const out = model.forward(ids);
    try {
      compare(await read(out.lastHiddenState), ref.get("last_hidden_state").data as Float32Array, "last_hidden_state (int32 ids)");
      compare(await read(out.pooled), ref.get("pooler_output").data as Float32Array, "pooler_output (int32 ids)");
    } finally {
      disposeOut(out);
      ids.dispose();
    }
  });

  test("clipSkip k = final_layer_norm(hidden_states[-(k+1)])", async () => {
    // The expected values: the reference hidden states through a float64 JS layer norm with the
    // checkpoint's final_layer_norm weights.
    const w = RefFile.read(referencePath("models/tiny-sd/text_encoder/model.safetensors"));
    const gamma = w.get("text_model.final_layer_norm.weight").data as Float32Array;
    const beta = w.get("text_model.final_layer_norm.bias").data as Float32Array;
    const hs = ref.get("hidden_states").data as Float32Array;
    const per = 3 * 77 * 32;
    const ids = idsTensor(ref.get("input_ids").data as BigInt64Array, [3, 77]);
    try {
      for (const k of [1, 2]) {
        const expected = layerNormRef(hs.subarray((3 - k) * per, (4 - k) * per), 32, gamma, beta, 1e-5);
        const out = model.forward(ids, { clipSkip: k });
        try {
          worst[`clipSkip${k}`] = compare(await read(out.lastHiddenState), expected, `clipSkip ${k}`);
          // pooled stays the full model's
          compare(await read(out.pooled), ref.get("pooler_output").data as Float32Array, `pooled with clipSkip ${k}`);
        } finally {
          disposeOut(out);
        }
      }
      expect(() => model.forward(ids, { clipSkip: 3 })).toThrow(/clipSkip must be an integer in \[0, 2\]/);
      expect(() => model.forward(ids, { clipSkip: -1 })).toThrow(/clipSkip/);
    } finally {
      ids.dispose();
    }
  });

  test("tokenizer + encoder end to end for the three prompts", async () => {
    const manifest = JSON.parse(fs.readFileSync(referencePath("cases/components_manifest.json"), "utf8"));
    const prompts: string[] = manifest.text_encoder.prompts;
    expect(prompts.length).toBe(3);
    const tok = CLIPTokenizer.fromDirectory(referencePath("models/tiny-sd/tokenizer"));
    const rows = prompts.map((p) => tok.encodePadded(p));
    const refIds = Array.from(ref.get("input_ids").data as BigInt64Array, Number);
    expect(rows.flat()).toEqual(refIds);
    const ids = idsTensor(rows);
    const out = model.forward(ids);
    try {
      worst.end_to_end = compare(await read(out.lastHiddenState), ref.get("last_hidden_state").data as Float32Array, "prompt_embeds from text");
    } finally {
      disposeOut(out);
      ids.dispose();
    }
  });

  test("bad ids are refused", () => {
    const f = Tensor.zeros([1, 77]);
    const long = Tensor.fromArray(new Int32Array(78), [1, 78]);
    const flat = Tensor.fromArray(new Int32Array(77), [77]);
    const oob = Tensor.fromArray(Int32Array.from({ length: 77 }, () => 49408), [1, 77]);
    try {
      expect(() => model.forward(f)).toThrow(/int32 or int64/);
      expect(() => model.forward(long)).toThrow(/exceed max_position_embeddings 77/);
      expect(() => model.forward(flat)).toThrow(/\[batch, tokens\]/);
      expect(() => model.forward(oob)).toThrow(/outside the table/);
    } finally {
      [f, long, flat, oob].forEach((t) => t.dispose());
    }
  });
});

describeIfReference("CLIPTextModel(WithProjection) vs transformers: tiny-sdxl encoders", () => {
  let te1: CLIPTextModel, te2: CLIPTextModel;
  let ref: RefFile;
  const worst: Record<string, number> = {};
  beforeAll(() => {
    te1 = loadFolderModel(referencePath("models/tiny-sdxl"), "text_encoder");
    te2 = loadFolderModel(referencePath("models/tiny-sdxl"), "text_encoder_2");
    ref = RefFile.read(referencePath("cases/sdxl.safetensors"));
  });
  afterAll(() => {
    te1?.dispose();
    te2?.dispose();
    process.stderr.write(`[clip-text] worst |diff| tiny-sdxl: ${JSON.stringify(worst)}\n`);
  });

  test("configs: WithProjection from architectures, exact GELU", () => {
    expect(te1.config).toMatchObject({ hiddenSize: 16, projectionDim: null, hiddenAct: "quick_gelu" });
    expect(te2.config).toMatchObject({ hiddenSize: 24, numHiddenLayers: 4, projectionDim: 32, hiddenAct: "gelu" });
    expect(te1.parameterCount()).toBe(801_632);
    expect(te2.parameterCount()).toBe(1_217_352);
  });

  test("hidden states, last_hidden_state, pooled_output and text_embeds (pad '!' = id 0)", async () => {
    const p = "enc.cat_zeros.";
    const ids1 = idsTensor(ref.get(p + "input_ids").data as BigInt64Array, [1, 77]);
    const ids2 = idsTensor(ref.get(p + "input_ids_2").data as BigInt64Array, [1, 77]);
    // tokenizer_2 pads with id 0, so the largest id (EOS) is the argmax only before padding: a real test of the legacy rule
    expect(Array.from(ref.get(p + "input_ids_2").data as BigInt64Array, Number).slice(-1)[0]).toBe(0);
    const o1 = te1.forward(ids1, { outputHiddenStates: true });
    const o2 = te2.forward(ids2, { outputHiddenStates: true });
    try {
      const h1 = ref.get(p + "te1.hidden_states").data as Float32Array, h2 = ref.get(p + "te2.hidden_states").data as Float32Array;
      for (let i = 0; i < 4; i++) worst[`te1.hs${i}`] = compare(await read(o1.hiddenStates![i]), h1.subarray(i * 77 * 16, (i + 1) * 77 * 16), `te1 hidden_states[${i}]`);
      for (let i = 0; i < 5; i++) worst[`te2.hs${i}`] = compare(await read(o2.hiddenStates![i]), h2.subarray(i * 77 * 24, (i + 1) * 77 * 24), `te2 hidden_states[${i}]`);
      worst.te2_last = compare(await read(o2.lastHiddenState), ref.get(p + "te2.last_hidden_state").data as Float32Array, "te2 last_hidden_state");
      worst.te2_pooled = compare(await read(o2.pooled), ref.get(p + "te2.pooled_output").data as Float32Array, "te2 pooled_output");
      expect(o2.textEmbeds!.shape).toEqual([1, 32]);
      worst.te2_text_embeds = compare(await read(o2.textEmbeds!), ref.get(p + "te2.text_embeds").data as Float32Array, "te2 text_embeds");
      compare(await read(o2.textEmbeds!), ref.get(p + "pooled_prompt_embeds").data as Float32Array, "pooled_prompt_embeds");
      expect(o1.textEmbeds).toBeUndefined();
    } finally {
      disposeOut(o1);
      disposeOut(o2);
      ids1.dispose();
      ids2.dispose();
    }
  });
});

// ---- a small random model against a naive float64 JS reference (no reference data needed)

interface SmallCfg { vocab: number; hidden: number; heads: number; layers: number; inter: number; maxPos: number; act: string; eos: number; proj?: number }

function rand(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function smallConfigJson(c: SmallCfg): Record<string, unknown> {
  return {
    architectures: [c.proj ? "CLIPTextModelWithProjection" : "CLIPTextModel"], model_type: "clip_text_model",
    vocab_size: c.vocab, hidden_size: c.hidden, num_attention_heads: c.heads, num_hidden_layers: c.layers,
    intermediate_size: c.inter, max_position_embeddings: c.maxPos, hidden_act: c.act, layer_norm_eps: 1e-5,
    eos_token_id: c.eos, bos_token_id: 0, pad_token_id: 1, projection_dim: c.proj ?? 16,
  };
}

function smallWeights(c: SmallCfg, seed = 7): Map<string, HostTensor> {
  const r = rand(seed);
  const m = new Map<string, HostTensor>();
  const put = (k: string, shape: number[], scale = 0.5, offset = 0) =>
    m.set(k, { shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => offset + scale * r()) });
  const D = c.hidden;
  put("text_model.embeddings.token_embedding.weight", [c.vocab, D], 1);
  put("text_model.embeddings.position_embedding.weight", [c.maxPos, D], 1);
  for (let l = 0; l < c.layers; l++) {
    const p = `text_model.encoder.layers.${l}.`;
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) { put(`${p}self_attn.${n}.weight`, [D, D]); put(`${p}self_attn.${n}.bias`, [D], 0.2); }
    put(`${p}layer_norm1.weight`, [D], 0.2, 1); put(`${p}layer_norm1.bias`, [D], 0.2);
    put(`${p}layer_norm2.weight`, [D], 0.2, 1); put(`${p}layer_norm2.bias`, [D], 0.2);
    put(`${p}mlp.fc1.weight`, [c.inter, D]); put(`${p}mlp.fc1.bias`, [c.inter], 0.2);
    put(`${p}mlp.fc2.weight`, [D, c.inter]); put(`${p}mlp.fc2.bias`, [D], 0.2);
  }
  put("text_model.final_layer_norm.weight", [D], 0.2, 1);
  put("text_model.final_layer_norm.bias", [D], 0.2);
  if (c.proj) put("text_projection.weight", [c.proj, D]);
  return m;
}

function layerNormRef(x: ArrayLike<number>, D: number, g: ArrayLike<number>, b: ArrayLike<number>, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / D; r++) {
    let mu = 0, v = 0;
    for (let i = 0; i < D; i++) mu += x[r * D + i];
    mu /= D;
    for (let i = 0; i < D; i++) v += (x[r * D + i] - mu) ** 2;
    const s = 1 / Math.sqrt(v / D + eps);
    for (let i = 0; i < D; i++) out[r * D + i] = (x[r * D + i] - mu) * s * g[i] + b[i];
  }
  return out;
}

function linearRef(x: Float64Array, rows: number, W: HostTensor, bias?: HostTensor): Float64Array {
  const [O, I] = W.shape;
  const out = new Float64Array(rows * O);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < O; o++) {
      let s = bias ? bias.data[o] : 0;
      for (let i = 0; i < I; i++) s += x[r * I + i] * W.data[o * I + i];
      out[r * O + o] = s;
    }
  return out;
}

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is too coarse; use a series / continued fraction good to ~1e-15.
  const t = Math.abs(x);
  if (t < 3) {
    let sum = t, term = t;
    for (let n = 1; n < 200; n++) { term *= -t * t / n; const add = term / (2 * n + 1); sum += add; if (Math.abs(add) < 1e-17) break; }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let f = 0;
  for (let n = 60; n >= 1; n--) f = (n / 2) / (t + f);
  return Math.sign(x) * (1 - Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f));
}

/** Naive CLIP text forward in float64: [hidden states], last, pooled, textEmbeds. */
function clipRef(c: SmallCfg, w: Map<string, HostTensor>, ids: number[][], skip = 0) {
  const B = ids.length, N = ids[0].length, D = c.hidden, H = c.heads, Dh = D / H;
  const g = (k: string) => w.get(k)!;
  let h = new Float64Array(B * N * D);
  for (let b = 0; b < B; b++) for (let n = 0; n < N; n++) for (let d = 0; d < D; d++)
    h[(b * N + n) * D + d] = g("text_model.embeddings.token_embedding.weight").data[ids[b][n] * D + d] + g("text_model.embeddings.position_embedding.weight").data[n * D + d];
  const hidden = [h];
  for (let l = 0; l < c.layers; l++) {
    const p = `text_model.encoder.layers.${l}.`;
    const x = layerNormRef(h, D, g(p + "layer_norm1.weight").data, g(p + "layer_norm1.bias").data, 1e-5);
    const q = linearRef(x, B * N, g(p + "self_attn.q_proj.weight"), g(p + "self_attn.q_proj.bias"));
    const k = linearRef(x, B * N, g(p + "self_attn.k_proj.weight"), g(p + "self_attn.k_proj.bias"));
    const v = linearRef(x, B * N, g(p + "self_attn.v_proj.weight"), g(p + "self_attn.v_proj.bias"));
    const a = new Float64Array(B * N * D);
    for (let b = 0; b < B; b++) for (let hh = 0; hh < H; hh++) for (let i = 0; i < N; i++) {
      const s: number[] = [];
      for (let j = 0; j <= i; j++) {
        let dot = 0;
        for (let d = 0; d < Dh; d++) dot += q[(b * N + i) * D + hh * Dh + d] * k[(b * N + j) * D + hh * Dh + d];
        s.push(dot / Math.sqrt(Dh));
      }
      const mx = Math.max(...s), e = s.map((z) => Math.exp(z - mx)), tot = e.reduce((u, z) => u + z, 0);
      for (let d = 0; d < Dh; d++) {
        let acc = 0;
        for (let j = 0; j <= i; j++) acc += (e[j] / tot) * v[(b * N + j) * D + hh * Dh + d];
        a[(b * N + i) * D + hh * Dh + d] = acc;
      }
    }
    const o = linearRef(a, B * N, g(p + "self_attn.out_proj.weight"), g(p + "self_attn.out_proj.bias"));
    const h1 = h.map((z, i) => z + o[i]);
    const y = layerNormRef(h1, D, g(p + "layer_norm2.weight").data, g(p + "layer_norm2.bias").data, 1e-5);
    const f1 = linearRef(y, B * N, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias"))
      .map((z) => (c.act === "gelu" ? 0.5 * z * (1 + erf(z / Math.SQRT2)) : z / (1 + Math.exp(-1.702 * z))));
    const f2 = linearRef(f1, B * N, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias"));
    h = h1.map((z, i) => z + f2[i]);
    hidden.push(h);
  }
  const lnF = (t: Float64Array) => layerNormRef(t, D, g("text_model.final_layer_norm.weight").data, g("text_model.final_layer_norm.bias").data, 1e-5);
  const full = lnF(h);
  const last = skip ? lnF(hidden[c.layers - skip]) : full;
  const pooled = new Float64Array(B * D);
  for (let b = 0; b < B; b++) {
    let pos = 0;
    if (c.eos === 2) { for (let n = 1; n < N; n++) if (ids[b][n] > ids[b][pos]) pos = n; }
    else { pos = ids[b].indexOf(c.eos); if (pos < 0) pos = 0; }
    for (let d = 0; d < D; d++) pooled[b * D + d] = full[(b * N + pos) * D + d];
  }
  const textEmbeds = c.proj ? linearRef(pooled, B, g("text_projection.weight")) : undefined;
  return { hidden, last, pooled, textEmbeds };
}

describe("CLIPTextModel vs a naive JS reference (small random models)", () => {
  const cases: [string, SmallCfg, number[][]][] = [
    // legacy rule: first position of the largest id; ties (padding with EOS) pick the first
    ["quick_gelu, eos_token_id 2 (argmax rule)", { vocab: 40, hidden: 12, heads: 3, layers: 3, inter: 20, maxPos: 9, act: "quick_gelu", eos: 2 },
      [[38, 5, 39, 7, 39, 39, 39, 39, 39], [38, 39, 1, 1, 1, 1, 1, 1, 1], [38, 3, 4, 5, 6, 7, 8, 9, 39]]],
    // other EOS id: first position holding it, position 0 when absent; a shorter sequence than maxPos
    ["gelu + projection, eos_token_id 7 (first EOS rule)", { vocab: 30, hidden: 16, heads: 2, layers: 2, inter: 24, maxPos: 12, act: "gelu", eos: 7, proj: 6 },
      [[1, 29, 7, 3, 7, 7, 0], [1, 2, 3, 4, 5, 6, 8], [7, 7, 7, 7, 7, 7, 7]]],
  ];
  for (const [name, c, rows] of cases) {
    test(name, async () => {
      const w = smallWeights(c);
      const model = CLIPTextModel.fromConfig(smallConfigJson(c));
      model.loadStateDict(LazyStateDict.fromArrays(w));
      const ids = idsTensor(rows);
      try {
        for (const skip of [0, 1]) {
          const exp = clipRef(c, w, rows, skip);
          const out = model.forward(ids, { clipSkip: skip, outputHiddenStates: true });
          try {
            for (let i = 0; i <= c.layers; i++) compare(await read(out.hiddenStates![i]), exp.hidden[i], `hidden ${i}`);
            compare(await read(out.lastHiddenState), exp.last, `last (skip ${skip})`);
            compare(await read(out.pooled), exp.pooled, "pooled");
            if (c.proj) compare(await read(out.textEmbeds!), exp.textEmbeds!, "textEmbeds");
          } finally {
            disposeOut(out);
          }
        }
      } finally {
        ids.dispose();
        model.dispose();
      }
    });
  }
});

// ---- configs and loading errors

describe("CLIP text config", () => {
  const base = smallConfigJson({ vocab: 40, hidden: 12, heads: 3, layers: 1, inter: 20, maxPos: 9, act: "quick_gelu", eos: 2 });
  test("defaults follow transformers' CLIPTextConfig", () => {
    const c = parseCLIPTextConfig({});
    expect(c).toEqual({ vocabSize: 49408, hiddenSize: 512, intermediateSize: 2048, numHiddenLayers: 12, numAttentionHeads: 8,
      maxPositionEmbeddings: 77, hiddenAct: "quick_gelu", layerNormEps: 1e-5, eosTokenId: 49407, projectionDim: null });
    expect(parseCLIPTextConfig(base, { withProjection: true }).projectionDim).toBe(16);
  });
  test("a CLIPModel config's text_config is used", () => {
    const c = parseCLIPTextConfig({ model_type: "clip", architectures: ["CLIPModel"], projection_dim: 768, text_config: { hidden_size: 64, num_attention_heads: 4 } }, { withProjection: true });
    expect(c).toMatchObject({ hiddenSize: 64, numAttentionHeads: 4, projectionDim: 768 });
  });
  test.each([
    [{ hidden_act: "relu" }, /hidden_act "relu" is not supported \(allowed: quick_gelu, gelu\)/],
    [{ hidden_act: "gelu_new" }, /hidden_act "gelu_new"/],
    [{ hidden_size: 10 }, /not divisible by num_attention_heads 3/],
    [{ model_type: "t5" }, /model_type must be "clip_text_model"/],
    [{ architectures: ["CLIPVisionModel"] }, /architectures must be/],
    [{ num_hidden_layers: 0 }, /num_hidden_layers must be an integer >= 1/],
    [{ layer_norm_eps: -1 }, /layer_norm_eps/],
    [{ eos_token_id: 1.5 }, /eos_token_id/],
  ])("refuses %j", (patch, msg) => {
    expect(() => parseCLIPTextConfig({ ...base, ...patch })).toThrow(msg);
  });
});

describe("CLIPTextModel loading errors (temp folders)", () => {
  const c: SmallCfg = { vocab: 40, hidden: 12, heads: 3, layers: 2, inter: 20, maxPos: 9, act: "quick_gelu", eos: 2 };
  let tmp: string;
  beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dk-clip-")); });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  /** A pipeline folder with a text_encoder whose weights are `w` (null: no safetensors). */
  function folder(name: string, w: Map<string, HostTensor> | null, extraFiles: Record<string, string> = {}): string {
    const root = path.join(tmp, name);
    fs.mkdirSync(path.join(root, "text_encoder"), { recursive: true });
    fs.writeFileSync(path.join(root, "model_index.json"), JSON.stringify({ _class_name: "StableDiffusionPipeline", text_encoder: ["transformers", "CLIPTextModel"], safety_checker: [null, null] }));
    fs.writeFileSync(path.join(root, "text_encoder", "config.json"), JSON.stringify(smallConfigJson(c)));
    if (w) {
      const rec: Record<string, SafetensorsTensorInput> = {};
      for (const [k, t] of w) rec[k] = { dtype: "F32", shape: [...t.shape], data: t.data };
      writeSafetensors(path.join(root, "text_encoder", "model.safetensors"), rec);
    }
    for (const [f, text] of Object.entries(extraFiles)) fs.writeFileSync(path.join(root, "text_encoder", f), text);
    return root;
  }

  function tryLoad(root: string): CLIPTextModel {
    const f = ModelFolder.open(root);
    const m = CLIPTextModel.fromConfig(f.config("text_encoder"));
    const w = f.weights("text_encoder");
    try {
      m.loadStateDict(w);
    } catch (e) {
      m.dispose();
      throw e;
    } finally {
      w.close();
    }
    return m;
  }

  test("a complete folder loads; a position_ids buffer is ignored", () => {
    const w = smallWeights(c);
    const root = folder("ok", w);
    tryLoad(root).dispose();
    // position_ids as older transformers saved it (int64 [1, maxPos])
    const root2 = path.join(tmp, "with-position-ids");
    fs.mkdirSync(path.join(root2, "text_encoder"), { recursive: true });
    fs.copyFileSync(path.join(root, "model_index.json"), path.join(root2, "model_index.json"));
    fs.copyFileSync(path.join(root, "text_encoder", "config.json"), path.join(root2, "text_encoder", "config.json"));
    const rec: Record<string, SafetensorsTensorInput> = {};
    for (const [k, t] of w) rec[k] = { dtype: "F32", shape: [...t.shape], data: t.data };
    rec["text_model.embeddings.position_ids"] = { dtype: "I64", shape: [1, 9], data: BigInt64Array.from({ length: 9 }, (_, i) => BigInt(i)) };
    writeSafetensors(path.join(root2, "text_encoder", "model.safetensors"), rec);
    tryLoad(root2).dispose();
  });

  test("a missing key is named", () => {
    const w = smallWeights(c);
    w.delete("text_model.encoder.layers.1.mlp.fc2.bias");
    let err: unknown;
    try { tryLoad(folder("missing", w)); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(StateDictError);
    expect((err as StateDictError).missing).toEqual(["text_model.encoder.layers.1.mlp.fc2.bias"]);
    expect((err as Error).message).toMatch(/missing keys: text_model\.encoder\.layers\.1\.mlp\.fc2\.bias/);
  });

  test("a wrong shape is named with both shapes", () => {
    const w = smallWeights(c);
    w.set("text_model.encoder.layers.0.self_attn.q_proj.weight", { shape: [12, 6], data: new Float32Array(72) });
    expect(() => tryLoad(folder("shape", w))).toThrow(/text_model\.encoder\.layers\.0\.self_attn\.q_proj\.weight: checkpoint \[12,6\] vs model \[12,12\]/);
  });

  test("an unexpected key (e.g. a projection the config does not have) is an error", () => {
    const w = smallWeights(c);
    w.set("text_projection.weight", { shape: [16, 12], data: new Float32Array(192) });
    expect(() => tryLoad(folder("unexpected", w))).toThrow(/unexpected keys: text_projection\.weight/);
  });

  test("pickle weights are refused with an explanation", () => {
    const root = folder("pickle", null, { "pytorch_model.bin": "\x80\x02not really a pickle" });
    expect(() => tryLoad(root)).toThrow(/pytorch_model\.bin: pickle checkpoints .* can execute arbitrary code.*safe_serialization=True/);
  });

  test("no weights at all", () => {
    expect(() => tryLoad(folder("empty", null))).toThrow(/no weights found \(looked for diffusion_pytorch_model\.safetensors/);
  });
});
