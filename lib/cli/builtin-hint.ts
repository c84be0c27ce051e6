// A hint for prompts to the built-in model: it was trained on emoji names only, so words its
// (trimmed) vocabulary never saw as whole words carry no meaning for it. Says which, so a
// surprising image has an explanation.
import * as fs from "fs";
import * as path from "path";

/** The words of `prompt` (CLIP's lower-cased letter/digit runs) that are not whole words in tokenizerDir's vocab.json. */
export function unknownWords(prompt: string, tokenizerDir: string): string[] {
  const vocab = JSON.parse(fs.readFileSync(path.join(tokenizerDir, "vocab.json"), "utf8")) as Record<string, number>;
  const words = prompt.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  return [...new Set(words.filter((w) => !(`${w}</w>` in vocab)))];
}

/** The line to print, or null when every word is known. */
export function builtinPromptHint(prompt: string, modelDir: string): string | null {
  const unknown = unknownWords(prompt, path.join(modelDir, "tokenizer"));
  if (unknown.length === 0) return null;
  return `note: the built-in model knows emoji names ("a red apple", "grinning face", "bahrain flag"); ` +
    `it never saw ${unknown.map((w) => `"${w}"`).join(", ")}, so expect a loose match`;
}
