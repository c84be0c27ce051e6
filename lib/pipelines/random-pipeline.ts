/**
 * createRandomPipeline: a complete pipeline built from config files alone, with random weights.
 *
 * What it is for: measuring speed and memory at real sizes (e.g. the full SD1.5 configs in the
 * package's `configs/sd15` at 512x512) without downloading a checkpoint, and tests that need a
 * pipeline of a given architecture. The images are noise-like; nothing is learned.
 *
 * Weights: every parameter is N(0, 0.02²) from the counter-based Tensor.randn stream (seed
 * `seed`, each parameter at its own offset, so the same seed gives the same weights on any
 * device), except GroupNorm/LayerNorm scales (1) and shifts (0). The tokenizer comes from
 * `tokenizerDir`, else `<configDir>/tokenizer`, else a built-in byte-level CLIP tokenizer (one
 * token per byte, no merges: different ids from the real vocabulary, but the same special tokens).
 */
import * as fs from "fs";
import * as path from "path";
import * as ops from "../ops";
import { Tensor, tidy, type DType, type DeviceName } from "../tensor";
import { GroupNorm, LayerNorm } from "../nn/layers";
import type { Module, StateDictSource } from "../nn/module";
import { readJsonObject } from "../io/model-folder";
import { CLIPTokenizer } from "../tokenizers/clip";
import { CLIPTextModel } from "../models/clip-text";
import { UNet2DConditionModel } from "../models/unet-2d-condition";
import { AutoencoderKL } from "../models/autoencoder-kl";
import { StableDiffusionPipeline, type PipelineDType } from "./stable-diffusion";
import { checkKeys } from "./text-to-image";
import { resolvePipelineDType, resolvePipelineDevice, resolveVaeDType, vaeDTypeFor, type VaeDTypeOption } from "./load";

export interface RandomPipelineOptions {
  /** Seed of the weights. Default 0. */
  seed?: number;
  /** A CLIP tokenizer folder (vocab.json, merges.txt). */
  tokenizerDir?: string;
  device?: "cpu" | "cuda" | "auto" | string;
  dtype?: PipelineDType;
  /** As loadPipeline's: "auto" (default, diffusers' rule) or the VAE's own dtype. */
  vaeDtype?: VaeDTypeOption;
}

const INIT_STD = 0.02;

/** Random values for every parameter a module declares (checkpoint layout), made on demand. */
class RandomSource implements StateDictSource {
  private readonly entries = new Map<string, { shape: number[]; kind: "randn" | "ones" | "zeros"; offset: number }>();
  constructor(module: Module, private readonly seed: number, startOffset: number) {
    let offset = startOffset;
    for (const [name, spec, owner, local] of module.namedParameterSpecs()) {
      const isNorm = owner instanceof GroupNorm || owner instanceof LayerNorm;
      const kind = isNorm ? (local === "weight" ? "ones" : "zeros") : "randn";
      this.entries.set(name, { shape: spec.shape, kind, offset });
      offset += spec.shape.reduce((a, b) => a * b, 1);
    }
    this.endOffset = offset;
  }
  readonly endOffset: number;
  keys(): string[] { return [...this.entries.keys()]; }
  shape(key: string): readonly number[] { return this.entries.get(key)!.shape; }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor {
    const e = this.entries.get(key)!;
    if (e.kind !== "randn") return Tensor.full(e.shape, e.kind === "ones" ? 1 : 0, opts);
    return tidy(() => {
      const r = ops.mul(Tensor.randn(e.shape, { seed: this.seed, offset: e.offset, device: opts.device }), INIT_STD);
      return r.dtype === opts.dtype ? r : r.to(opts.device, opts.dtype);
    });
  }
}

/** GPT-2's byte -> printable character table (as the CLIP vocabulary uses). */
function bytesToUnicode(): string[] {
  const table: string[] = [];
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) table.push(String.fromCodePoint(printable(b) ? b : 256 + n++));
  return table;
}

/** A CLIP tokenizer with one token per byte (ids 0-511) and no merges; BOS/EOS at CLIP's ids 49406/49407. */
export function byteLevelTokenizer(): CLIPTokenizer {
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((ch, i) => {
    vocab[ch] = i;
    vocab[`${ch}</w>`] = 256 + i;
  });
  vocab["<|startoftext|>"] = 49406;
  vocab["<|endoftext|>"] = 49407;
  return CLIPTokenizer.fromFiles(JSON.stringify(vocab), "#version: 0.2\n");
}

export async function createRandomPipeline(configDir: string, opts: RandomPipelineOptions = {}): Promise<StableDiffusionPipeline> {
  const op = "createRandomPipeline";
  checkKeys(op, opts, ["seed", "tokenizerDir", "device", "dtype", "vaeDtype"]);
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`${op}: seed must be a non-negative integer, got ${String(seed)}`);
  const device = resolvePipelineDevice(op, opts.device);
  const dtype = resolvePipelineDType(op, opts.dtype, device);
  const vaeRequest = resolveVaeDType(op, opts.vaeDtype, device);
  const dir = path.resolve(configDir);
  const read = (sub: string, file: string) => readJsonObject(path.join(dir, sub, file), `${sub} config`);
  const tokDir = opts.tokenizerDir ?? (fs.existsSync(path.join(dir, "tokenizer", "vocab.json")) ? path.join(dir, "tokenizer") : undefined);
  const tokenizer = tokDir ? CLIPTokenizer.fromDirectory(tokDir) : byteLevelTokenizer();
  const scheduler = read("scheduler", "scheduler_config.json");

  const built: Module[] = [];
  try {
    let offset = 0;
    const fill = (m: Module, dt: DType) => {
      built.push(m);
      const src = new RandomSource(m, seed, offset);
      offset = src.endOffset;
      m.loadStateDict(src, { dtype: dt, device });
    };
    const textEncoder = CLIPTextModel.fromConfig(read("text_encoder", "config.json"));
    fill(textEncoder, dtype);
    // SDXL: a second, projecting text encoder (and its tokenizer, else the byte-level one)
    let textEncoder2: CLIPTextModel | undefined, tokenizer2: CLIPTokenizer | undefined;
    if (fs.existsSync(path.join(dir, "text_encoder_2", "config.json"))) {
      textEncoder2 = CLIPTextModel.fromConfig(read("text_encoder_2", "config.json"), { withProjection: true });
      fill(textEncoder2, dtype);
      tokenizer2 = fs.existsSync(path.join(dir, "tokenizer_2", "vocab.json")) ? CLIPTokenizer.fromDirectory(path.join(dir, "tokenizer_2")) : byteLevelTokenizer();
    }
    const unet = new UNet2DConditionModel(read("unet", "config.json"));
    fill(unet, dtype);
    const vae = new AutoencoderKL(read("vae", "config.json"));
    const vaeDtype = vaeDTypeFor(vae, dtype, device, vaeRequest);
    fill(vae, vaeDtype);
    return new StableDiffusionPipeline({
      tokenizer, textEncoder, unet, vae, scheduler, device, dtype, vaeDtype, modelName: `random-${path.basename(dir)}`, tokenizer2, textEncoder2,
    });
  } catch (e) {
    for (const m of built) m.dispose();
    throw e;
  }
}
