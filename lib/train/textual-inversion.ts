/**
 * Textual inversion (Gal et al. 2022): a new word whose embedding vectors are trained so that the
 * frozen model draws the training images when prompted with it. The word is added to the
 * tokenizer with `vectors` ids after the vocabulary; its rows start as the mean embedding of the
 * initializer word's tokens and are looked up beside the frozen table (Embedding.extraRows), so
 * only they receive gradients. Prompts come from templates ("a photo of a <word>", or for a style
 * "a painting in the style of <word>") or from the captions, which must then name the word.
 * The result is a diffusers-style embedding file ({ "<word>": [vectors, dim] }) that
 * loadTextualInversion, the A1111 web UI and diffusers' load_textual_inversion read; for SDXL,
 * whose two text encoders each get the word, A1111's { clip_l, clip_g }.
 */
import { Tensor, tidy } from "../tensor";
import * as ops from "../ops";
import type { CLIPTextModel } from "../models/clip-text";
import type { CLIPTokenizer } from "../tokenizers/clip";
import { writeSafetensors, type SafetensorsTensorInput } from "../io/safetensors";
import type { TrainingDataset } from "./data";
import type { Rng } from "./rng";
import { checkGroupKeys } from "./loop";

export type TextualInversionTemplate = "object" | "style" | "captions";
export const TEXTUAL_INVERSION_TEMPLATES: readonly TextualInversionTemplate[] = ["object", "style", "captions"];

export interface TextualInversionTrainOptions {
  /** The new word, e.g. "<my-cat>": one word without spaces, not already a token. */
  token: string;
  /** Word(s) whose mean embedding the vectors start from (e.g. "cat"). Default: the mean of the whole vocabulary's rows. */
  initializer?: string;
  /** Embedding vectors the word stands for (1-64). Default 1. */
  vectors?: number;
  /** Prompts: "object" (default) or "style" templates around the word, or "captions": the dataset's own, which must contain it. */
  template?: TextualInversionTemplate;
}

export interface ResolvedTextualInversion {
  token: string;
  initializer: string | null;
  vectors: number;
  template: TextualInversionTemplate;
}

// Our own phrasings; "{}" stands for the word.
const TEMPLATES: Record<Exclude<TextualInversionTemplate, "captions">, readonly string[]> = {
  object: [
    "a photo of a {}", "a picture of the {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a good photo of the {}", "an image of one {}", "a photo of my {}", "a clean photo of the {}", "a rendering of a {}",
  ],
  style: [
    "a painting in the style of {}", "a picture in the style of {}", "art in the style of {}", "an image in the style of {}",
    "a drawing in the style of {}", "a rendering in the style of {}", "a nice painting in the style of {}", "a small picture in the style of {}",
  ],
};

/** The textualInversion option, checked (the word's own checks happen when it is added). */
export function resolveTextualInversion(op: string, v: unknown): ResolvedTextualInversion | null {
  if (v === undefined) return null;
  if (v === null || typeof v !== "object") throw new TypeError(`${op}: textualInversion must be { token, initializer?, vectors?, template? }`);
  const o = v as Record<string, unknown>;
  checkGroupKeys(op, "textualInversion", o, ["token", "initializer", "vectors", "template"]);
  if (typeof o.token !== "string" || o.token.trim() === "" || /\s/.test(o.token))
    throw new TypeError(`${op}: textualInversion.token must be one word without spaces, e.g. "<my-cat>", got ${JSON.stringify(o.token)}`);
  if (o.initializer !== undefined && (typeof o.initializer !== "string" || o.initializer.trim() === ""))
    throw new TypeError(`${op}: textualInversion.initializer must be a non-empty string, got ${JSON.stringify(o.initializer)}`);
  const vectors = o.vectors ?? 1;
  if (!Number.isInteger(vectors) || (vectors as number) < 1 || (vectors as number) > 64)
    throw new RangeError(`${op}: textualInversion.vectors must be an integer in [1, 64], got ${String(o.vectors)}`);
  const template = o.template ?? "object";
  if (!TEXTUAL_INVERSION_TEMPLATES.includes(template as TextualInversionTemplate))
    throw new RangeError(`${op}: textualInversion.template must be one of ${TEXTUAL_INVERSION_TEMPLATES.map((t) => JSON.stringify(t)).join(", ")}, got ${JSON.stringify(o.template)}`);
  return { token: o.token, initializer: (o.initializer as string | undefined) ?? null, vectors: vectors as number, template: template as TextualInversionTemplate };
}

/** With template "captions": every image needs a caption that names the word. */
export function checkCaptionsNameToken(op: string, ds: TrainingDataset, token: string): void {
  const lower = token.toLowerCase();
  const without: number[] = [];
  for (let i = 0; i < ds.size; i++) if (!ds.captions(i).some((c) => c.toLowerCase().includes(lower))) without.push(i);
  if (without.length)
    throw new RangeError(`${op}: textualInversion.template "captions": ${without.length} of ${ds.size} images have no caption containing ${JSON.stringify(token)} ` +
      `(e.g. image ${without[0]}: ${JSON.stringify(ds.caption(without[0]))}); name the word in every caption, or use template "object" or "style"`);
}

/** One text encoder's side of the word: its new rows, looked up beside the frozen table. */
interface EncoderRows { te: CLIPTextModel; rows: Tensor }

/**
 * The trained word: for SD one text encoder's rows, for SDXL both encoders' (saved as clip_l and
 * clip_g, A1111's SDXL format).
 */
export class TrainedEmbedding {
  readonly token: string;
  private readonly parts: EncoderRows[] = [];
  private readonly templates: readonly string[] | null;

  constructor(encoders: readonly { te: CLIPTextModel; tokenizer: CLIPTokenizer }[], o: ResolvedTextualInversion, device: string) {
    this.token = o.token;
    this.templates = o.template === "captions" ? null : TEMPLATES[o.template];
    // every check first (ids line up, the word is new, the initializer has tokens): nothing changes on an error
    const starts = encoders.map(({ te, tokenizer }) => {
      const table = te.textModel.embeddings.tokenEmbedding;
      if (tokenizer.nextId !== table.count)
        throw new RangeError(`textualInversion: the tokenizer's next id is ${tokenizer.nextId} but the text encoder's embedding table has ${table.count} rows; they must line up`);
      if (tokenizer.hasWord(o.token)) throw new RangeError(`textualInversion: ${JSON.stringify(o.token)} is already a token; choose another word`);
      if (o.initializer === null) return null;
      const ids = tokenizer.encode(o.initializer).slice(1, -1);
      if (ids.length === 0) throw new RangeError(`textualInversion: the initializer ${JSON.stringify(o.initializer)} has no tokens`);
      return ids;
    });
    encoders.forEach(({ te, tokenizer }, i) => {
      tokenizer.addToken(o.token, o.vectors);
      const table = te.textModel.embeddings.tokenEmbedding, D = table.dim, initIds = starts[i];
      const start = tidy(() => {
        const w = table.weight;
        const mean = initIds ? ops.mean(ops.embedding(Tensor.fromArray(Int32Array.from(initIds), [initIds.length]), w), 0) : ops.mean(w, 0);
        const row = ops.reshape(mean.to(w.device, "float32"), [1, D]);
        return ops.concat(Array.from({ length: o.vectors }, () => row), 0);
      });
      const rows = device === start.device ? start : start.to(device);
      if (rows !== start) start.dispose();
      rows.requiresGrad = true;
      this.parts.push({ te, rows });
    });
    this.attach();
  }

  /** Trained values (all encoders). */
  get size(): number {
    return this.parts.reduce((n, p) => n + p.rows.numel, 0);
  }

  attach(): void {
    for (const p of this.parts) p.te.textModel.embeddings.tokenEmbedding.extraRows = p.rows;
  }

  /** The prompt a sample trains with: a template around the word, or its caption. */
  prompt(caption: string, rng: Rng): string {
    return this.templates ? this.templates[rng.int(this.templates.length)].replace("{}", this.token) : caption;
  }

  params(): [string, Tensor][] {
    return this.parts.map((p, i) => [`textual_inversion${i ? `_${i + 1}` : ""}.${this.token}`, p.rows]);
  }

  /**
   * Writes the word's vectors (float32; `replace` swaps in other tensors, an EMA's shadows): SD as
   * diffusers' { "<word>": [vectors, dim] }, SDXL as A1111's { clip_l, clip_g } with the word in
   * the metadata (loadTextualInversion reads it back as the default word).
   */
  async save(file: string, replace?: ReadonlyMap<Tensor, Tensor>): Promise<void> {
    const keys = this.parts.length === 1 ? [this.token] : ["clip_l", "clip_g"];
    const rec: Record<string, SafetensorsTensorInput> = {};
    for (const [i, p] of this.parts.entries()) {
      const t = replace?.get(p.rows) ?? p.rows;
      rec[keys[i]] = { dtype: "F32", shape: [...t.shape], data: await t.toFloat32Array() };
    }
    writeSafetensors(file, rec, { format: "pt", token: this.token });
  }

  dispose(): void {
    for (const p of this.parts) {
      const e = p.te.textModel.embeddings.tokenEmbedding;
      if (e.extraRows === p.rows) e.extraRows = null;
      p.rows.dispose();
    }
    this.parts.length = 0;
  }
}
