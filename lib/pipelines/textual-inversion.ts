/**
 * Textual inversion (Gal et al. 2022): learned token embeddings loaded into the text encoder(s)
 * under a new word. File formats (.safetensors only: pickled .pt/.bin embeddings can run code):
 *  - A1111 / sd-scripts: `emb_params` [n, D] (SD 1.x/2.x), or `clip_l` [n, 768] and `clip_g`
 *    [n, 1280] (SDXL); the word defaults to the metadata's `token` (as train() writes it), else
 *    the file name ("EasyNegative.safetensors" -> EasyNegative);
 *  - diffusers `learned_embeds.safetensors`: one tensor named by its word ("<cat-toy>": [D] or [n, D]);
 *  - A1111's `string_to_param.*` key, as some converters write it.
 * A word of n vectors stands for n new ids (diffusers' "<w> <w>_1 ..."); it is matched in prompts
 * in any case. Loaded embeddings stay until the pipeline is disposed.
 */
import * as path from "path";
import { Tensor } from "../tensor";
import { openWeightsFile } from "../io/model-folder";
import type { HostStateDictSource } from "../io/state-dict";
import type { CLIPTextModel } from "../models/clip-text";
import type { CLIPTokenizer } from "../tokenizers/clip";
import type { StableDiffusionPipeline } from "./stable-diffusion";

export interface TextualInversionOptions {
  /** The word that calls it in prompts. Default: the file's own (diffusers) or the file name (A1111). */
  token?: string;
}

export interface LoadedEmbedding {
  token: string;
  /** Vectors (ids) the word stands for. */
  vectors: number;
  file: string;
}

interface Found {
  token: string;
  /** Per text encoder (1 or 2), the [n, D] key and its shape. */
  parts: { key: string; shape: number[] }[];
}

function rows(shape: readonly number[]): number[] {
  return shape.length === 1 ? [1, shape[0]] : [...shape];
}

/** The `token` entry of the file's metadata (diffusekit writes it), else the file name (A1111's rule). */
function defaultWord(source: HostStateDictSource, file: string): string {
  const meta = (source as { files?: readonly { metadata: Record<string, string> }[] }).files?.[0]?.metadata.token;
  return typeof meta === "string" && meta.trim() !== "" && !/\s/.test(meta) ? meta : path.basename(file).replace(/\.safetensors$/i, "");
}

function identify(source: HostStateDictSource, file: string, xl: boolean, token?: string): Found {
  const keys = source.keys();
  const name = defaultWord(source, file);
  const part = (k: string) => ({ key: k, shape: rows(source.shape(k)) });
  if (keys.includes("clip_l") || keys.includes("clip_g")) {
    if (!xl) throw new Error(`loadTextualInversion: ${path.basename(file)} is an SDXL embedding (clip_l/clip_g); this model has one text encoder`);
    if (!keys.includes("clip_l") || !keys.includes("clip_g")) throw new Error(`loadTextualInversion: ${path.basename(file)} needs both clip_l and clip_g for SDXL`);
    return { token: token ?? name, parts: [part("clip_l"), part("clip_g")] };
  }
  if (xl) throw new Error(`loadTextualInversion: ${path.basename(file)} is an SD 1.x/2.x embedding; an SDXL model needs clip_l and clip_g vectors`);
  if (keys.includes("emb_params")) return { token: token ?? name, parts: [part("emb_params")] };
  const stp = keys.filter((k) => k.startsWith("string_to_param."));
  if (stp.length === 1) return { token: token ?? name, parts: [part(stp[0])] };
  if (keys.length === 1) return { token: token ?? keys[0], parts: [part(keys[0])] };
  throw new Error(`loadTextualInversion: ${path.basename(file)} is not a textual-inversion embedding (expected emb_params, clip_l + clip_g, or one tensor named by its token; found ${keys.slice(0, 5).join(", ")})`);
}

export function loadTextualInversion(pipe: StableDiffusionPipeline, file: string, opts: TextualInversionOptions = {}): LoadedEmbedding {
  const op = "loadTextualInversion";
  if (typeof file !== "string" || file === "") throw new TypeError(`${op}: file must be the path of an embedding .safetensors file`);
  if (opts.token !== undefined && (typeof opts.token !== "string" || opts.token.trim() === "" || /\s/.test(opts.token)))
    throw new TypeError(`${op}: token must be one word without spaces`);
  if (pipe.isRefiner) throw new Error(`${op}: textual-inversion embeddings are not supported for the SDXL refiner`);
  const source = openWeightsFile(file);
  try {
    const found = identify(source, file, pipe.isXL, opts.token);
    const targets: [CLIPTokenizer, CLIPTextModel][] = [[pipe.tokenizer, pipe.textEncoder]];
    if (pipe.isXL) targets.push([pipe.tokenizer2!, pipe.textEncoder2!]);
    const n = found.parts[0].shape[0];
    found.parts.forEach((p, i) => {
      const width = targets[i][1].config.hiddenSize;
      if (p.shape.length !== 2 || p.shape[1] !== width || p.shape[0] !== n || n < 1)
        throw new Error(`${op}: ${p.key} in ${path.basename(file)} is [${p.shape.join(",")}]; text encoder ${i + 1} takes vectors of width ${width}${i > 0 ? ` and as many as the first (${n})` : ""}`);
    });
    // every check before anything changes: a new word, and ids that line up with embedding rows
    targets.forEach(([tok, te], i) => {
      if (tok.hasWord(found.token)) throw new Error(`${op}: "${found.token}" is already a token of this model; pass { token: "<another-word>" }`);
      const rowsNow = te.textModel.embeddings.tokenEmbedding.count;
      if (tok.nextId !== rowsNow)
        throw new Error(`${op}: tokenizer ${i + 1} would give id ${tok.nextId} but text encoder ${i + 1} has ${rowsNow} embedding rows; they must line up`);
    });
    targets.forEach(([tok, te], i) => {
      const vectors = Tensor.fromArray(source.readFloat32(found.parts[i].key), [n, found.parts[i].shape[1]]);
      try {
        te.textModel.embeddings.tokenEmbedding.append(vectors);
        tok.addToken(found.token, n);
      } finally {
        vectors.dispose();
      }
    });
    return { token: found.token, vectors: n, file: path.resolve(file) };
  } finally {
    source.close();
  }
}
