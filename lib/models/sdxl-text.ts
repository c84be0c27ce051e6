/**
 * SDXL's text conditioning, as diffusers' encode_prompt builds it. The base model has two CLIP
 * encoders: both encoders' penultimate hidden states (before final_layer_norm; clipSkip k takes
 * layer L-1-k) side by side, [B, 77, D1 + D2], and the second encoder's projected EOS output,
 * [B, P]. The refiner has only the second, projecting encoder: its penultimate states and its
 * projected output (diffusers then zips the prompts with one encoder, so the first prompt feeds it).
 * Shared by the pipeline and the trainer.
 */
import * as ops from "../ops";
import { Tensor } from "../tensor";
import type { CLIPTokenizer } from "../tokenizers/clip";
import type { CLIPTextModel } from "./clip-text";

export interface DualTextEncoder {
  tokenizer: CLIPTokenizer;
  /** The base model's first encoder, or (refiner, no second one) the projecting encoder. */
  textEncoder: CLIPTextModel;
  tokenizer2?: CLIPTokenizer | null;
  /** With a text projection (CLIPTextModelWithProjection). */
  textEncoder2?: CLIPTextModel | null;
}

/** The largest clipSkip the encoders allow. */
export function maxClipSkipXL(e: DualTextEncoder): number {
  return Math.min(e.textEncoder.config.numHiddenLayers, e.textEncoder2?.config.numHiddenLayers ?? Infinity) - 2;
}

const ids = (tok: CLIPTokenizer, xs: readonly string[]): Tensor => Tensor.fromArray(tok.encodePaddedBatch(xs), [xs.length, tok.maxLength]);

/** Records the encoders' work; run it inside tidy() and keep what is returned. `texts2` feeds the second encoder (base only). */
export function encodeTextsXL(e: DualTextEncoder, texts: readonly string[], texts2: readonly string[], clipSkip = 0): { embeds: Tensor; pooled: Tensor } {
  if (!Number.isInteger(clipSkip) || clipSkip < 0 || clipSkip > maxClipSkipXL(e))
    throw new RangeError(`encodePromptXL: clipSkip must be an integer in [0, ${maxClipSkipXL(e)}], got ${clipSkip}`);
  const L1 = e.textEncoder.config.numHiddenLayers;
  if (!e.textEncoder2) {
    const o = e.textEncoder.forward(ids(e.tokenizer, texts), { outputHiddenStates: true });
    return { embeds: o.hiddenStates![L1 - 1 - clipSkip], pooled: o.textEmbeds! };
  }
  // the first encoder gives only its hidden state: its later layers and pooled output would be
  // recorded for nothing (and, while training, left on the tape)
  const h1 = e.textEncoder.hiddenState(ids(e.tokenizer, texts), L1 - 1 - clipSkip);
  const L2 = e.textEncoder2.config.numHiddenLayers;
  const o2 = e.textEncoder2.forward(ids(e.tokenizer2!, texts2), { outputHiddenStates: true });
  return { embeds: ops.concat([h1, o2.hiddenStates![L2 - 1 - clipSkip]], 2), pooled: o2.textEmbeds! };
}
