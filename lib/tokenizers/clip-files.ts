/**
 * A CLIP tokenizer folder as transformers' CLIPTokenizer.save_pretrained writes it: vocab.json,
 * merges.txt, special_tokens_map.json, tokenizer_config.json, and added_tokens.json when words were
 * added (textual inversion). CLIPTokenizer.fromDirectory reads all five back.
 */
import * as fs from "fs";
import * as path from "path";
import type { CLIPTokenizer } from "./clip";
import { writeFileAtomic } from "../io/files";


/** The files of a transformers CLIPTokenizer folder, in memory. */
export interface TokenizerFiles {
  vocab: Record<string, number>;
  /** merges.txt pairs in rank order (without the "#version" line). */
  merges: [string, string][];
  specialTokens: { bos_token: string; eos_token: string; pad_token: string; unk_token: string };
  modelMaxLength: number;
  /** Added tokens (added_tokens.json): token -> id, after the vocabulary. */
  added?: Record<string, number>;
}

/** Writes the folder transformers' CLIPTokenizer.from_pretrained (and lib/tokenizers) reads. */
export function writeTokenizerFiles(dir: string, files: TokenizerFiles): void {
  fs.mkdirSync(dir, { recursive: true });
  const sp = files.specialTokens;
  writeFileAtomic(path.join(dir, "vocab.json"), JSON.stringify(files.vocab));
  writeFileAtomic(path.join(dir, "merges.txt"), "#version: 0.2\n" + files.merges.map(([a, b]) => `${a} ${b}`).join("\n") + (files.merges.length ? "\n" : ""));
  writeFileAtomic(path.join(dir, "special_tokens_map.json"), JSON.stringify(sp, null, 2) + "\n");
  writeFileAtomic(path.join(dir, "tokenizer_config.json"), JSON.stringify({
    add_prefix_space: false, bos_token: sp.bos_token, clean_up_tokenization_spaces: true, do_lower_case: true,
    eos_token: sp.eos_token, errors: "replace", model_max_length: files.modelMaxLength, pad_token: sp.pad_token,
    tokenizer_class: "CLIPTokenizer", unk_token: sp.unk_token,
  }, null, 2) + "\n");
  const addedFile = path.join(dir, "added_tokens.json");
  if (files.added && Object.keys(files.added).length) writeFileAtomic(addedFile, JSON.stringify(files.added, null, 2) + "\n");
  else fs.rmSync(addedFile, { force: true });  // a stale one would add words this tokenizer lacks
}

/** A loaded tokenizer's files: its vocabulary, merges and special tokens, and the words added to it. */
export function tokenizerFiles(tokenizer: CLIPTokenizer): TokenizerFiles {
  const added: Record<string, number> = {};
  for (const w of tokenizer.addedWords()) w.tokens.forEach((t, i) => { added[t] = w.ids[i]; });
  return {
    vocab: tokenizer.baseVocab(),
    merges: tokenizer.mergePairs(),
    specialTokens: { bos_token: tokenizer.bosToken, eos_token: tokenizer.eosToken, pad_token: tokenizer.padToken, unk_token: tokenizer.unkToken },
    modelMaxLength: tokenizer.maxLength,
    added,
  };
}
