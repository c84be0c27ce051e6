import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { CLIPTokenizer } from "../lib/tokenizers/clip";
import { tokenizerFiles, writeTokenizerFiles } from "../lib/tokenizers/clip-files";
import { describeIfReference, referencePath } from "./helpers/reference";

interface TokenizerCase {
  text: string;
  input_ids: number[];
  attention_mask: number[];
  ids_unpadded: number[];
  num_ids_unpadded: number;
  truncated: boolean;
  tokens: string[];
}

describeIfReference("CLIPTokenizer vs transformers' slow CLIPTokenizer (cases/tokenizer.json)", () => {
  const golden = JSON.parse(fs.readFileSync(referencePath("cases", "tokenizer.json"), "utf8")) as {
    bos_token_id: number;
    eos_token_id: number;
    pad_token_id: number;
    model_max_length: number;
    tokenizer_folder: string;
    cases: TokenizerCase[];
  };
  const tok = CLIPTokenizer.fromDirectory(referencePath(golden.tokenizer_folder));

  test("special ids, length and vocabulary size", () => {
    expect(golden.cases).toHaveLength(42);
    expect(tok.bosTokenId).toBe(golden.bos_token_id);
    expect(tok.eosTokenId).toBe(golden.eos_token_id);
    expect(tok.padTokenId).toBe(golden.pad_token_id);
    expect(tok.maxLength).toBe(golden.model_max_length);
    expect(tok.vocabSize).toBe(49408);
  });

  test.each(golden.cases.map((c, i) => [i, JSON.stringify(c.text).slice(0, 60), c] as const))(
    "case %i %s",
    (_i, _name, c) => {
      expect(tok.tokens(c.text)).toEqual(c.tokens);
      expect(tok.encode(c.text)).toEqual(c.ids_unpadded);
      expect(tok.encode(c.text)).toHaveLength(c.num_ids_unpadded);
      const { ids, attentionMask } = tok.encodeWithMask(c.text);
      expect(ids).toEqual(c.input_ids);
      expect(attentionMask).toEqual(c.attention_mask);
      expect(tok.encodePadded(c.text)).toEqual(c.input_ids);
      expect(c.num_ids_unpadded > 77).toBe(c.truncated);
    },
  );

  test("characters unassigned in Unicode 14.0 (the reference's) are dropped like other category-C ones", () => {
    // U+1FA77 pink heart and U+1FAE8 shaking face are Unicode 15.0; U+1FAE0 melting face is 14.0.
    expect(tok.encode("love \u{1FA77} you\u{1FAE8}")).toEqual(tok.encode("love you"));
    expect(tok.encode("\u{1FAE0}").length).toBeGreaterThan(2);
  });

  test("decode inverts encode up to lower-casing and whitespace", () => {
    expect(tok.decode(tok.encode("A cat  wearing a hat"), { skipSpecialTokens: true })).toBe("a cat wearing a hat");
    expect(tok.decode(tok.encode("café crème 日本"), { skipSpecialTokens: true })).toBe("café crème 日 本");
    expect(tok.decode(tok.encode("hi"))).toBe("<|startoftext|>hi <|endoftext|>");
  });

  describe("SD2/SDXL-style tokenizer with pad token \"!\" (tiny-sdxl/tokenizer_2)", () => {
    const tok2 = CLIPTokenizer.fromDirectory(referencePath("models", "tiny-sdxl", "tokenizer_2"));

    test("pads with id 0 after EOS, mask from the real length", () => {
      expect(tok2.padTokenId).toBe(0);
      expect(tok2.padToken).toBe("!");
      expect(tok2.eosTokenId).toBe(49407);
      const text = "a cat wearing a hat";
      const { ids, attentionMask } = tok2.encodeWithMask(text);
      expect(ids).toEqual([49406, 320, 2368, 3309, 320, 3801, 49407, ...new Array(70).fill(0)]);
      expect(attentionMask).toEqual([...new Array(7).fill(1), ...new Array(70).fill(0)]);
      expect(tok2.encode(text)).toEqual(tok.encode(text));
    });

    test("truncation keeps BOS + 75 tokens + EOS", () => {
      const ids = tok2.encodePadded(new Array(100).fill("cat").join(" "));
      expect(ids).toHaveLength(77);
      expect(ids[0]).toBe(49406);
      expect(ids[76]).toBe(49407);
      expect(new Set(ids.slice(1, 76))).toEqual(new Set([2368]));
    });

    test('"!" is an added special token there, split out before BPE as transformers does', () => {
      expect(tok.tokens("wow!")).toEqual(["<|startoftext|>", "wow</w>", "!</w>", "<|endoftext|>"]);
      expect(tok2.tokens("wow!")).toEqual(["<|startoftext|>", "wow</w>", "!", "<|endoftext|>"]);
      expect(tok2.encode("wow!")).toEqual([49406, tok.encode("wow")[1], 0, 49407]);
    });
  });
});

describe("CLIPTokenizer on a synthetic vocabulary", () => {
  const vocab = {
    "!": 0,
    a: 1,
    b: 2,
    c: 3,
    "a</w>": 4,
    "b</w>": 5,
    "c</w>": 6,
    ab: 7,
    "abc</w>": 8,
    "bc</w>": 9,
    "Ġ": 10,
    "<|startoftext|>": 11,
    "<|endoftext|>": 12,
  };
  const merges = "#version: 0.2\na b\nb c</w>\nab c</w>\n";

  test("applies merges by rank and marks word ends", () => {
    const tok = CLIPTokenizer.fromFiles(JSON.stringify(vocab), merges, { maxLength: 6 });
    // "abc": pairs (a,b)=0 and (b,c</w>)=1 -> "ab","c</w>" -> "abc</w>"; in "cab" the pair is (a,b</w>), no merge
    expect(tok.tokens("ABC cab")).toEqual(["<|startoftext|>", "abc</w>", "c", "a", "b</w>", "<|endoftext|>"]);
    expect(tok.encode("abc")).toEqual([11, 8, 12]);
    expect(tok.encodeWithMask("abc a")).toEqual({ ids: [11, 8, 4, 12, 12, 12], attentionMask: [1, 1, 1, 1, 0, 0] });
    expect(tok.encodePadded("a a a a a a")).toEqual([11, 4, 4, 4, 4, 12]);
    expect(tok.vocabSize).toBe(13);
    // an unknown BPE symbol maps to the unk token (<|endoftext|>)
    expect(tok.encode("z")).toEqual([11, 12, 12]);
  });

  test("reads files from a folder and honours pad_token / model_max_length", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "diffusekit-tok-"));
    try {
      fs.writeFileSync(path.join(dir, "vocab.json"), JSON.stringify(vocab));
      fs.writeFileSync(path.join(dir, "merges.txt"), merges);
      fs.writeFileSync(
        path.join(dir, "tokenizer_config.json"),
        JSON.stringify({ model_max_length: 5, pad_token: "!" }),
      );
      const tok = CLIPTokenizer.fromDirectory(dir);
      expect(tok.maxLength).toBe(5);
      expect(tok.padTokenId).toBe(0);
      expect(tok.encodePadded("a")).toEqual([11, 4, 12, 0, 0]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("added words round-trip through added_tokens.json (multi-vector words regrouped); gaps are refused", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "diffusekit-tok-"));
    try {
      const tok = CLIPTokenizer.fromFiles(JSON.stringify(vocab), merges, { maxLength: 8, padToken: "!" });
      expect(tok.addToken("<Shiny>", 3)).toBe(13);
      expect(tok.addToken("<one>")).toBe(16);
      expect(tok.addedWords()).toEqual([
        { word: "<Shiny>", tokens: ["<Shiny>", "<Shiny>_1", "<Shiny>_2"], ids: [13, 14, 15] },
        { word: "<one>", tokens: ["<one>"], ids: [16] },
      ]);
      expect(tok.baseVocab()).toEqual(vocab);
      expect(tok.mergePairs()).toEqual([["a", "b"], ["b", "c</w>"], ["ab", "c</w>"]]);
      writeTokenizerFiles(dir, tokenizerFiles(tok));
      expect(JSON.parse(fs.readFileSync(path.join(dir, "added_tokens.json"), "utf8"))).toEqual({ "<Shiny>": 13, "<Shiny>_1": 14, "<Shiny>_2": 15, "<one>": 16 });
      const back = CLIPTokenizer.fromDirectory(dir);
      expect(back.padTokenId).toBe(0);
      expect(back.maxLength).toBe(8);
      expect(back.encode("abc <shiny> <ONE>")).toEqual([11, 8, 13, 14, 15, 16, 12]);
      expect(back.encode("abc <shiny> <ONE>")).toEqual(tok.encode("abc <shiny> <ONE>"));
      // written again without added words, the stale added_tokens.json goes
      writeTokenizerFiles(dir, tokenizerFiles(CLIPTokenizer.fromFiles(JSON.stringify(vocab), merges)));
      expect(fs.existsSync(path.join(dir, "added_tokens.json"))).toBe(false);
      fs.writeFileSync(path.join(dir, "added_tokens.json"), JSON.stringify({ "<gap>": 20 }));
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/"<gap>" has id 20.*next id 13/);
      fs.writeFileSync(path.join(dir, "added_tokens.json"), JSON.stringify({ "<x>": "13" }));
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/id of "<x>" must be an integer/);
      // transformers lists the special tokens again with their own ids: not added twice
      fs.writeFileSync(path.join(dir, "added_tokens.json"), JSON.stringify({ "<|endoftext|>": 12, "<x>": 13 }));
      expect(CLIPTokenizer.fromDirectory(dir).encode("<x>")).toEqual([11, 13, 12]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("missing or malformed inputs give clear errors", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "diffusekit-tok-"));
    try {
      expect(() => CLIPTokenizer.fromDirectory(path.join(dir, "nope"))).toThrow(/does not exist/);
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/cannot read vocabulary .*vocab\.json/);
      fs.writeFileSync(path.join(dir, "vocab.json"), "{ not json");
      fs.writeFileSync(path.join(dir, "merges.txt"), merges);
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/vocab\.json is not valid JSON/);
      fs.writeFileSync(path.join(dir, "vocab.json"), "[1, 2]");
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/must be a JSON object/);
      fs.writeFileSync(path.join(dir, "vocab.json"), JSON.stringify({ ...vocab, x: -1 }));
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/token "x" has id -1/);
      const { ["<|endoftext|>"]: _eos, ...noEos } = vocab;
      fs.writeFileSync(path.join(dir, "vocab.json"), JSON.stringify(noEos));
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/eos token "<\|endoftext\|>" is not in the vocabulary/);
      fs.writeFileSync(path.join(dir, "vocab.json"), JSON.stringify(vocab));
      fs.writeFileSync(path.join(dir, "merges.txt"), "#version: 0.2\na b c\n");
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/merges .*line 2 is not two symbols/);
      fs.writeFileSync(path.join(dir, "merges.txt"), merges);
      fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify({ pad_token: "<pad>" }));
      expect(() => CLIPTokenizer.fromDirectory(dir)).toThrow(/pad token "<pad>" is not in the vocabulary/);
      expect(() => CLIPTokenizer.fromFiles(JSON.stringify(vocab), merges, { maxLength: 1 })).toThrow(RangeError);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
