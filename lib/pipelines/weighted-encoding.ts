/**
 * Encoding prompts with A1111-style weights (prompt-weighting.ts): every 75-token chunk of every
 * text goes through the text encoder(s) in one batch; each chunk's hidden states are multiplied
 * by the token weights and rescaled to the chunk's unweighted mean; a text's chunks are joined on
 * the token axis. All texts of one call get the same number of chunks (padded with empty ones), so
 * the prompt and negative rows of a CFG batch line up.
 */
import * as ops from "../ops";
import { Tensor, keep, tidy } from "../tensor";
import type { CLIPTextModel } from "../models/clip-text";
import type { CLIPTokenizer } from "../tokenizers/clip";
import { weightedChunks, type TokenChunk } from "./prompt-weighting";
import type { StableDiffusionPipeline } from "./stable-diffusion";

/** Chunks per text, padded with empty chunks to the longest. */
function chunkAll(tokenizer: CLIPTokenizer, texts: readonly string[], count?: number): TokenChunk[][] {
  const per = texts.map((t) => weightedChunks(tokenizer, t));
  const k = count ?? Math.max(...per.map((c) => c.length));
  const empty = weightedChunks(tokenizer, "")[0];
  return per.map((c) => [...c, ...Array<TokenChunk>(k - c.length).fill(empty)]);
}

/** z · w per token, then rescaled so the chunk's mean is z's again. z [n, 77, D], weights per chunk. */
function applyWeights(z: Tensor, chunks: TokenChunk[]): Tensor {
  if (chunks.every((c) => c.weights.every((w) => w === 1))) return z;
  const [n, L] = z.shape;
  const w = new Float32Array(n * L);
  chunks.forEach((c, i) => w.set(c.weights, i * L));
  const wt = Tensor.fromArray(w, [n, L, 1], { device: z.device });
  const zf = z.dtype === "float32" ? z : z.to(z.device, "float32");
  const weighted = ops.mul(zf, wt);
  const k = ops.div(ops.mean(zf, [1, 2], true), ops.mean(weighted, [1, 2], true));
  const out = ops.mul(weighted, k);
  return out.dtype === z.dtype ? out : out.to(z.device, z.dtype);
}

/** [texts x chunks, 77] ids for one encoder. */
function idTensor(chunks: TokenChunk[][]): Tensor {
  const flat = chunks.flat();
  const ids = new Int32Array(flat.length * 77);
  flat.forEach((c, i) => ids.set(c.ids, i * 77));
  return Tensor.fromArray(ids, [flat.length, 77]);
}

/** [k chunks of one text as rows] -> [1, 77k, D]. */
function joinChunks(z: Tensor, text: number, k: number): Tensor {
  const rows = ops.slice(z, 0, text * k, (text + 1) * k);
  return ops.reshape(ops.contiguous(rows), [1, k * z.shape[1], z.shape[2]]);
}

/** SD 1.x/2.x: one [1, 77k, D] per text (kept), the hidden states diffusers would use (clipSkip as there). */
export function encodeWeightedTexts(pipe: StableDiffusionPipeline, texts: readonly string[], clipSkip: number): Tensor[] {
  const chunks = chunkAll(pipe.tokenizer, texts);
  const k = chunks[0].length;
  return tidy(() => {
    const z = applyWeights(pipe.textEncoder.forward(idTensor(chunks), { clipSkip }).lastHiddenState, chunks.flat());
    return texts.map((_, t) => joinChunks(z, t, k));
  }).map((t) => keep(t));
}

/** The penultimate-style hidden states SDXL takes from one encoder, weighted. */
function xlStates(te: CLIPTextModel, chunks: TokenChunk[][], clipSkip: number): { z: Tensor; textEmbeds: Tensor } {
  const L = te.config.numHiddenLayers;
  const o = te.forward(idTensor(chunks), { outputHiddenStates: true });
  return { z: applyWeights(o.hiddenStates![L - 1 - clipSkip], chunks.flat()), textEmbeds: o.textEmbeds ?? o.pooled };
}

/**
 * SDXL: per text pair, embeds [1, 77k, D1 + D2] (both encoders' weighted chunks side by side) and
 * pooled [1, P] from the second encoder's first chunk (kept).
 */
export function encodeWeightedTextsXL(pipe: StableDiffusionPipeline, texts: readonly string[], texts2: readonly string[], clipSkip: number): { embeds: Tensor; pooled: Tensor }[] {
  const c1 = chunkAll(pipe.tokenizer, texts), c2 = chunkAll(pipe.tokenizer2!, texts2);
  const k = Math.max(c1[0].length, c2[0].length);
  const [a, b] = [chunkAll(pipe.tokenizer, texts, k), chunkAll(pipe.tokenizer2!, texts2, k)];
  return tidy(() => {
    const s1 = xlStates(pipe.textEncoder, a, clipSkip), s2 = xlStates(pipe.textEncoder2!, b, clipSkip);
    const z = ops.concat([s1.z, s2.z], 2);
    return texts.map((_, t) => ({ embeds: joinChunks(z, t, k), pooled: ops.slice(s2.textEmbeds, 0, t * k, t * k + 1) }));
  }).map((r) => ({ embeds: keep(r.embeds), pooled: keep(ops.contiguous(r.pooled)) }));
}
