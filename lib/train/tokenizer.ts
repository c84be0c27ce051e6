// Tokenizer files for a text encoder trained from scratch.
//
// The tokenizer is CLIP's byte-level BPE (lib/tokenizers/clip.ts), so a trained model loads with
// any CLIP tokenizer code. Its 49,408-entry vocabulary would make the token embedding the largest
// part of a small text encoder, so by default the vocabulary is trimmed to what the captions use:
// the 512 byte symbols, every symbol the BPE of a caption word passes through, and the special
// tokens, renumbered densely in the original order; merges are kept (in their order) where both
// halves and the result survive. Caption words then tokenize to the same strings as with the full
// vocabulary (BPE always picks the lowest-ranked merge present, and every merge it picked is
// kept), and any other text still tokenizes, falling back to shorter pieces and bytes.
import * as fs from "fs";
import * as path from "path";
import { packageRoot } from "../native";
import { basicClean, CLIPTokenizer } from "../tokenizers/clip";
import { writeTokenizerFiles, type TokenizerFiles } from "../tokenizers/clip-files";

export { writeTokenizerFiles, type TokenizerFiles };

const CLIP_PATTERN = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;
const MAX_MERGES = 49152 - 256 - 2;

function byteSymbols(): string[] {
  const table: string[] = [];
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) table.push(String.fromCodePoint(printable(b) ? b : 256 + n++));
  return table;
}
const BYTE_SYMBOLS = byteSymbols();

function readJson(file: string): Record<string, unknown> | null {
  if (!fs.existsSync(file)) return null;
  return JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
}
const content = (v: unknown): string | undefined =>
  typeof v === "string" ? v : v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string" ? (v as { content: string }).content : undefined;

/** Reads a tokenizer folder (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json). */
export function readTokenizerFiles(dir: string): TokenizerFiles {
  const vocabFile = path.join(dir, "vocab.json"), mergesFile = path.join(dir, "merges.txt");
  if (!fs.existsSync(vocabFile) || !fs.existsSync(mergesFile))
    throw new Error(`tokenizer: ${dir} must hold vocab.json and merges.txt (a CLIP tokenizer folder)`);
  CLIPTokenizer.fromDirectory(dir);  // validates the folder with the tokenizer's own errors
  const vocab = JSON.parse(fs.readFileSync(vocabFile, "utf8")) as Record<string, number>;
  const lines = fs.readFileSync(mergesFile, "utf8").trim().split("\n");
  const first = lines[0]?.startsWith("#") ? 1 : 0;
  const merges: [string, string][] = [];
  for (let i = first; i < lines.length && i - first < MAX_MERGES; i++) {
    const parts = lines[i].replace(/\r$/, "").split(/\s+/).filter((p) => p.length > 0);
    if (parts.length === 2) merges.push([parts[0], parts[1]]);
  }
  const cfg = readJson(path.join(dir, "tokenizer_config.json")) ?? {};
  const sp = readJson(path.join(dir, "special_tokens_map.json")) ?? {};
  const pick = (k: string, d: string) => content(sp[k]) ?? content(cfg[k]) ?? d;
  const mml = cfg["model_max_length"];
  return {
    vocab, merges,
    specialTokens: {
      bos_token: pick("bos_token", "<|startoftext|>"), eos_token: pick("eos_token", "<|endoftext|>"),
      pad_token: pick("pad_token", "<|endoftext|>"), unk_token: pick("unk_token", "<|endoftext|>"),
    },
    modelMaxLength: typeof mml === "number" && Number.isInteger(mml) && mml >= 2 && mml <= 1_000_000 ? mml : 77,
  };
}

/** A CLIP-compatible tokenizer with one token per byte and no merges (the fallback when no vocabulary is at hand). */
export function byteLevelTokenizerFiles(): TokenizerFiles {
  const vocab: Record<string, number> = {};
  BYTE_SYMBOLS.forEach((ch, i) => { vocab[ch] = i; vocab[`${ch}</w>`] = 256 + i; });
  vocab["<|startoftext|>"] = 512;
  vocab["<|endoftext|>"] = 513;
  return {
    vocab, merges: [],
    specialTokens: { bos_token: "<|startoftext|>", eos_token: "<|endoftext|>", pad_token: "<|endoftext|>", unk_token: "<|endoftext|>" },
    modelMaxLength: 77,
  };
}

/** Every symbol the BPE of `texts` passes through (the pre-tokenizer and BPE of lib/tokenizers/clip.ts). */
function traceSymbols(texts: readonly string[], ranks: Map<string, number>, specials: readonly string[]): Set<string> {
  const seen = new Set<string>();
  const done = new Set<string>();
  for (const text of texts) {
    let rest = text;
    for (const s of specials) rest = rest.split(s).join(" ");
    for (const m of basicClean(rest).matchAll(CLIP_PATTERN)) {
      let mapped = "";
      for (const b of Buffer.from(m[0], "utf8")) mapped += BYTE_SYMBOLS[b];
      if (done.has(mapped)) continue;
      done.add(mapped);
      const chars = Array.from(mapped);
      let word = [...chars.slice(0, -1), chars[chars.length - 1] + "</w>"];
      word.forEach((w) => seen.add(w));
      while (word.length > 1) {
        let best = -1, bestRank = Infinity;
        for (let i = 0; i < word.length - 1; i++) {
          const r = ranks.get(word[i] + " " + word[i + 1]);
          if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
        }
        if (best < 0) break;
        const a = word[best], b = word[best + 1];
        const merged: string[] = [];
        for (let i = 0; i < word.length; ) {
          if (i < word.length - 1 && word[i] === a && word[i + 1] === b) { merged.push(a + b); seen.add(a + b); i += 2; }
          else { merged.push(word[i]); i++; }
        }
        word = merged;
      }
    }
  }
  return seen;
}

/** The vocabulary trimmed to what `texts` need (see the top of this file). */
export function trimTokenizer(files: TokenizerFiles, texts: readonly string[]): TokenizerFiles {
  const ranks = new Map<string, number>();
  files.merges.forEach(([a, b], r) => { const k = a + " " + b; if (!ranks.has(k)) ranks.set(k, r); });
  const sp = files.specialTokens;
  const specials = [...new Set([sp.bos_token, sp.eos_token, sp.pad_token, sp.unk_token])];
  const keep = traceSymbols(texts, ranks, specials);
  for (const ch of BYTE_SYMBOLS) { keep.add(ch); keep.add(`${ch}</w>`); }
  for (const s of specials) keep.add(s);
  const kept = [...keep].filter((t) => files.vocab[t] !== undefined).sort((a, b) => files.vocab[a] - files.vocab[b]);
  const vocab: Record<string, number> = {};
  kept.forEach((t, i) => { vocab[t] = i; });
  const merges = files.merges.filter(([a, b]) => vocab[a] !== undefined && vocab[b] !== undefined && vocab[a + b] !== undefined);
  return { vocab, merges, specialTokens: { ...sp }, modelMaxLength: files.modelMaxLength };
}

export function tokenizerFromFiles(files: TokenizerFiles): CLIPTokenizer {
  const sp = files.specialTokens;
  const merges = "#version: 0.2\n" + files.merges.map(([a, b]) => `${a} ${b}`).join("\n") + "\n";
  return CLIPTokenizer.fromFiles(JSON.stringify(files.vocab), merges, {
    bosToken: sp.bos_token, eosToken: sp.eos_token, padToken: sp.pad_token, unkToken: sp.unk_token, maxLength: files.modelMaxLength,
  });
}

/** Ids of the special tokens and the vocabulary size (largest id + 1) for a text encoder config. */
export function tokenizerIds(files: TokenizerFiles): { vocabSize: number; bos: number; eos: number; pad: number } {
  const ids = Object.values(files.vocab);
  const sp = files.specialTokens;
  return { vocabSize: Math.max(...ids) + 1, bos: files.vocab[sp.bos_token], eos: files.vocab[sp.eos_token], pad: files.vocab[sp.pad_token] };
}

/**
 * The CLIP tokenizer folder to start from when none is given: among the `tokenizer/` folders of
 * the models the package ships (models/<name>/tokenizer), the one with the largest vocab.json (the
 * full CLIP vocabulary rather than a trimmed one); null when there is none (then the byte-level
 * tokenizer is used).
 */
export function defaultTokenizerDir(): string | null {
  const models = path.join(packageRoot, "models");
  if (!fs.existsSync(models)) return null;
  let best: string | null = null, bestSize = -1;
  for (const name of fs.readdirSync(models).sort()) {
    const dir = path.join(models, name, "tokenizer");
    const vocab = path.join(dir, "vocab.json");
    if (!fs.existsSync(vocab) || !fs.existsSync(path.join(dir, "merges.txt"))) continue;
    const size = fs.statSync(vocab).size;
    if (size > bestSize) { best = dir; bestSize = size; }
  }
  return best;
}

