// The built-in model's prompt hint (lib/cli/builtin-hint.ts): which words its vocabulary never
// saw as whole words, and the CLI line that names them (none when every word is known).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { builtinPromptHint, unknownWords } from "../../lib/cli/builtin-hint";

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "dk-hint-"));
  fs.mkdirSync(path.join(dir, "tokenizer"));
  const vocab = Object.fromEntries(["a</w>", "red</w>", "apple</w>", "flag</w>", "2</w>", "ph", "oto</w>"].map((w, i) => [w, i]));
  fs.writeFileSync(path.join(dir, "tokenizer", "vocab.json"), JSON.stringify(vocab));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test("words are lower-cased letter/digit runs; a word counts as known only as a whole word", () => {
  const tok = path.join(dir, "tokenizer");
  expect(unknownWords("A RED apple, 2 flag!", tok)).toEqual([]);
  expect(unknownWords("a photo of a red apple, photo", tok)).toEqual(["photo", "of"]);  // "ph" + "oto" pieces do not make it known
  expect(builtinPromptHint("a red apple", dir)).toBeNull();
  expect(builtinPromptHint("a photo of a red apple", dir)).toMatch(/never saw "photo", "of", so expect a loose match$/);
});
