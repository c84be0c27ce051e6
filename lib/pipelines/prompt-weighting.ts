/**
 * A1111-style prompt emphasis and long prompts, as in the AUTOMATIC1111 web UI's documented
 * syntax (and stable-diffusion.cpp's):
 *   (text)        weight x 1.1 (nesting multiplies: ((text)) = 1.21)
 *   [text]        weight / 1.1
 *   (text:1.5)    weight x 1.5
 *   \( \) \[ \]   literal brackets
 *   BREAK         start a new 75-token chunk
 * Unclosed brackets apply to the end of the prompt; a stray closer is literal text.
 *
 * A prompt becomes chunks of 75 tokens, each encoded as its own 77-token sequence (BOS + 75 + EOS
 * or padding) and concatenated on the token axis, so prompts are not cut at 75 tokens. A chunk
 * that fills up breaks after its last comma when that comma is at most 20 tokens back. Each token's
 * hidden state is multiplied by its weight, then the chunk is rescaled to its unweighted mean.
 */
import type { CLIPTokenizer } from "../tokenizers/clip";

/** A run of prompt text with one weight; `brk` marks a BREAK. */
export interface PromptFragment {
  text: string;
  weight: number;
  brk?: boolean;
}

const NUMBER_CLOSE = /^:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)/;

/** Splits a prompt into weighted fragments (adjacent fragments of equal weight merged). */
export function parsePromptWeights(prompt: string): PromptFragment[] {
  const out: PromptFragment[] = [];
  const round: number[] = [], square: number[] = [];
  let text = "";
  const flush = () => {
    if (!text) return;
    text.split(/\s*\bBREAK\b\s*/).forEach((part, i) => {
      if (i > 0) out.push({ text: "", weight: 1, brk: true });
      if (part) out.push({ text: part, weight: 1 });
    });
    text = "";
  };
  const scale = (from: number, k: number) => {
    for (let i = from; i < out.length; i++) if (!out[i].brk) out[i].weight *= k;
  };
  for (let i = 0; i < prompt.length; i++) {
    const c = prompt[i];
    if (c === "\\" && i + 1 < prompt.length) {
      text += prompt[++i];
      continue;
    }
    const num = c === ":" && round.length ? NUMBER_CLOSE.exec(prompt.slice(i)) : null;
    if (num) {
      flush();
      scale(round.pop()!, Number(num[1]));
      i += num[0].length - 1;
    } else if (c === "(" || c === "[") {
      flush();
      (c === "(" ? round : square).push(out.length);
    } else if (c === ")" && round.length) {
      flush();
      scale(round.pop()!, 1.1);
    } else if (c === "]" && square.length) {
      flush();
      scale(square.pop()!, 1 / 1.1);
    } else {
      text += c;
    }
  }
  flush();
  for (const p of round) scale(p, 1.1);
  for (const p of square) scale(p, 1 / 1.1);
  const merged: PromptFragment[] = [];
  for (const f of out) {
    const last = merged[merged.length - 1];
    if (last && !last.brk && !f.brk && last.weight === f.weight) last.text += f.text;
    else merged.push({ ...f });
  }
  return merged.length ? merged : [{ text: "", weight: 1 }];
}

/** One 77-token sequence and the weight of each position (1 for BOS, EOS and padding). */
export interface TokenChunk {
  ids: number[];
  weights: number[];
}

const CHUNK = 75;
const COMMA_BACKTRACK = 20;

/** The prompt's tokens in 75-token chunks (at least one), each framed by BOS and EOS and padded. */
export function weightedChunks(tokenizer: CLIPTokenizer, prompt: string): TokenChunk[] {
  if (tokenizer.maxLength !== CHUNK + 2) throw new RangeError(`prompt weighting needs a ${CHUNK + 2}-token text encoder, this one takes ${tokenizer.maxLength}`);
  const comma = tokenizer.tokenToId(",</w>");
  const chunks: TokenChunk[] = [];
  let ids: number[] = [], weights: number[] = [], lastComma = -1;
  const close = () => {
    const pad = CHUNK - ids.length;
    chunks.push({
      ids: [tokenizer.bosTokenId, ...ids, tokenizer.eosTokenId, ...Array<number>(pad).fill(tokenizer.padTokenId)],
      weights: [1, ...weights, 1, ...Array<number>(pad).fill(1)],
    });
    ids = [];
    weights = [];
    lastComma = -1;
  };
  for (const f of parsePromptWeights(prompt)) {
    if (f.brk) {
      close();
      continue;
    }
    for (const id of tokenizer.encode(f.text).slice(1, -1)) {
      if (ids.length === CHUNK) {
        if (lastComma >= 0 && ids.length - lastComma <= COMMA_BACKTRACK) {
          // carry the words after the last comma over to the next chunk
          const [restIds, restW] = [ids.slice(lastComma + 1), weights.slice(lastComma + 1)];
          ids = ids.slice(0, lastComma + 1);
          weights = weights.slice(0, lastComma + 1);
          close();
          ids = restIds;
          weights = restW;
        } else {
          close();
        }
      }
      if (id === comma) lastComma = ids.length;
      ids.push(id);
      weights.push(f.weight);
    }
  }
  if (ids.length || chunks.length === 0) close();
  return chunks;
}
