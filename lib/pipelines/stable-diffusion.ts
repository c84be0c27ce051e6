/**
 * The Stable Diffusion 1.x / 2.x pipeline object: its components (tokenizer, CLIP text encoder,
 * U-Net, VAE, the model's scheduler config), where and in which precision they run, and prompt
 * encoding. The generation loops live in text-to-image.ts, image-to-image.ts and inpaint.ts.
 *
 * Precision: weights and activations of the three networks are in `dtype` on `device`; latents,
 * guidance and every sampler update stay float32 (DESIGN.md, "Precision"). An fp16 VAE whose
 * config says force_upcast runs in float32, as diffusers does.
 */
import { Tensor, tidy, keep, type DType } from "../tensor";
import type { CLIPTokenizer } from "../tokenizers/clip";
import type { CLIPTextModel } from "../models/clip-text";
import type { UNet2DConditionModel } from "../models/unet-2d-condition";
import type { AutoencoderKL } from "../models/autoencoder-kl";
import type { SchedulerClassName } from "../schedulers/schedule";
import { textToImage, decodeLatents, type GenerateOptions, type GenerateResult, type DecodeResult } from "./text-to-image";
import { imageToImage, type Img2ImgOptions } from "./image-to-image";
import { inpaint, type InpaintOptions } from "./inpaint";
import type { VaeTilingOptions } from "../models/vae-tiling";
import { LoraPatches, type AppliedLora, type LoraOptions } from "../lora/apply";
import { loadTextualInversion, type LoadedEmbedding, type TextualInversionOptions } from "./textual-inversion";
import { savePipeline, type SavePipelineOptions } from "./save";
import { encodeTextsXL } from "../models/sdxl-text";

export type PipelineDevice = "cpu" | "cuda" | "auto";
export type PipelineDType = "float32" | "float16" | "bfloat16";
export const PIPELINE_DTYPES: readonly PipelineDType[] = ["float32", "float16", "bfloat16"];

/** The diffusers class name of a scheduler_config.json object (`_class_name`). */
export function schedulerClassOf(config: Readonly<Record<string, unknown>>): SchedulerClassName | null {
  const c = config["_class_name"];
  return typeof c === "string" ? (c as SchedulerClassName) : null;
}

export interface PipelineComponents {
  tokenizer: CLIPTokenizer;
  textEncoder: CLIPTextModel;
  unet: UNet2DConditionModel;
  vae: AutoencoderKL;
  /** The model's scheduler_config.json (with `_class_name`): what "default" samples with, and what every sampler is built from. */
  scheduler: Readonly<Record<string, unknown>>;
  /** Resolved device ("cpu", "cuda", "cuda:1"...). */
  device: string;
  dtype: PipelineDType;
  /** The VAE's dtype (float32 when an fp16 VAE must be upcast). Default: dtype. */
  vaeDtype?: DType;
  /** Short model name for image metadata (folder or file name). */
  modelName?: string;
  /** SDXL: the second tokenizer and text encoder (a CLIPTextModelWithProjection: its pooled, projected output conditions the U-Net). */
  tokenizer2?: CLIPTokenizer;
  textEncoder2?: CLIPTextModel;
  /** SDXL (model_index.json's force_zeros_for_empty_prompt): without a negative prompt, CFG's negative embeddings are zeros. Default true. */
  forceZerosForEmptyPrompt?: boolean;
}

export class StableDiffusionPipeline {
  readonly tokenizer: CLIPTokenizer;
  readonly textEncoder: CLIPTextModel;
  readonly tokenizer2: CLIPTokenizer | null;
  readonly textEncoder2: CLIPTextModel | null;
  readonly forceZerosForEmptyPrompt: boolean;
  readonly unet: UNet2DConditionModel;
  readonly vae: AutoencoderKL;
  readonly scheduler: Readonly<Record<string, unknown>>;
  readonly device: string;
  readonly dtype: PipelineDType;
  readonly vaeDtype: DType;
  readonly modelName: string;
  private isDisposed = false;
  private readonly patches: LoraPatches;

  constructor(c: PipelineComponents) {
    this.tokenizer = c.tokenizer;
    this.textEncoder = c.textEncoder;
    this.tokenizer2 = c.tokenizer2 ?? null;
    this.textEncoder2 = c.textEncoder2 ?? null;
    this.forceZerosForEmptyPrompt = c.forceZerosForEmptyPrompt ?? true;
    this.unet = c.unet;
    this.vae = c.vae;
    this.scheduler = Object.freeze({ ...c.scheduler });
    this.device = c.device;
    this.dtype = c.dtype;
    this.vaeDtype = c.vaeDtype ?? c.dtype;
    this.modelName = c.modelName ?? "";
    this.patches = new LoraPatches({ unet: this.unet, textEncoder: this.textEncoder, textEncoder2: this.textEncoder2 });
    const latentChannels = this.vae.config.latentChannels;
    const inChannels = this.unet.config.inChannels;
    if ((inChannels !== latentChannels && inChannels !== 2 * latentChannels + 1) || this.unet.config.outChannels !== latentChannels)
      throw new Error(
        `StableDiffusionPipeline: the U-Net takes ${inChannels} channels and returns ${this.unet.config.outChannels}, ` +
          `the VAE has ${latentChannels} latent channels (a U-Net takes ${latentChannels}, or ${2 * latentChannels + 1} for inpainting, and returns ${latentChannels})`,
      );
    this.checkTextEncoders();
  }

  private checkTextEncoders(): void {
    const M = "StableDiffusionPipeline";
    const addition = this.unet.config.addition;
    const te2 = this.textEncoder2;
    // SDXL base: a second, projecting encoder; the refiner: one encoder, the projecting one
    const projecting = te2 ?? (addition ? this.textEncoder : null);
    if (addition && (!projecting || (te2 && !this.tokenizer2) || projecting.config.projectionDim === null))
      throw new Error(`${M}: an SDXL U-Net (addition_embed_type "text_time") needs a text encoder with a text projection (textEncoder2, or the refiner's only encoder)`);
    if (!addition && (te2 || this.tokenizer2)) throw new Error(`${M}: a second text encoder needs an SDXL U-Net (addition_embed_type "text_time")`);
    const hidden = this.textEncoder.config.hiddenSize + (te2 ? te2.config.hiddenSize : 0);
    if (this.unet.config.crossAttentionDim.some((d) => d !== hidden))
      throw new Error(`${M}: the U-Net's cross_attention_dim ${this.unet.config.crossAttentionDim.join("/")} does not match the text encoder${te2 ? "s' hidden sizes" : "'s hidden size"} ${hidden}`);
    const ids = addition ? (addition.inputDim - projecting!.config.projectionDim!) / addition.timeEmbedDim : 0;
    if (addition && ids !== (te2 ? 6 : 5))
      throw new Error(`${M}: the U-Net's add_embedding takes ${addition.inputDim} values, but ${te2 ? "6 size ids (SDXL base)" : "5 ids (the refiner's sizes and aesthetic score)"} x ${addition.timeEmbedDim} + the text projection's ${projecting!.config.projectionDim} make ${(te2 ? 6 : 5) * addition.timeEmbedDim + projecting!.config.projectionDim!}`);
  }

  /** SDXL: two text encoders (the refiner: one), pooled text and size/crop ids condition the U-Net. */
  get isXL(): boolean {
    return this.unet.config.addition !== null;
  }

  /** The SDXL refiner: one (projecting) text encoder, and an aesthetic score among its five ids. */
  get isRefiner(): boolean {
    return this.isXL && this.textEncoder2 === null;
  }

  /** Spatial factor between pixels and latents (8 for SD, 4 for tiny-sd). */
  get vaeScaleFactor(): number {
    return this.vae.config.scaleFactor;
  }
  /** Default image size: the U-Net's sample_size times the VAE scale factor. */
  get defaultSize(): { width: number; height: number } {
    const s = this.unet.config.sampleSize;
    const [h, w] = Array.isArray(s) ? [s[0], s[1]] : [s ?? 64, s ?? 64];
    return { width: w * this.vaeScaleFactor, height: h * this.vaeScaleFactor };
  }
  /** The scheduler class "default" names. */
  get defaultSchedulerClass(): SchedulerClassName | null {
    return schedulerClassOf(this.scheduler);
  }
  get disposed(): boolean {
    return this.isDisposed;
  }

  /** True for an inpainting U-Net (latents + mask + masked-image latents in: 9 channels for SD). */
  get isInpaintingModel(): boolean {
    return this.unet.config.inChannels === 2 * this.vae.config.latentChannels + 1;
  }

  /** @internal Throws for an inpainting U-Net: it needs a mask and an image (inpaint()). */
  assertPlainUnet(op: string): void {
    if (this.isInpaintingModel)
      throw new Error(`${op}: ${this.modelName || "this model"} is an inpainting model (its U-Net takes ${this.unet.config.inChannels} channels: latents, mask, masked image); use inpaint({ image, mask, prompt })`);
  }

  /** @internal Throws when the pipeline was disposed. */
  assertLive(op: string): void {
    if (this.isDisposed) throw new Error(`${op}: the pipeline is disposed`);
  }

  /**
   * Text encoder hidden states [B, 77, hidden] for one prompt or a list (`dtype` on `device`),
   * exactly what diffusers' encode_prompt hands the U-Net: ids padded to 77 with the tokenizer's
   * pad token and truncated to 75 tokens + BOS/EOS, no attention mask. `clipSkip` k uses
   * final_layer_norm(hidden_states[-(k+1)]). The caller disposes the tensor.
   */
  async encodePrompt(text: string | readonly string[], opts: { clipSkip?: number } = {}): Promise<Tensor> {
    this.assertLive("encodePrompt");
    const texts = typeof text === "string" ? [text] : [...text];
    if (texts.length === 0 || texts.some((t) => typeof t !== "string"))
      throw new TypeError("encodePrompt: text must be a string or a non-empty array of strings");
    return this.encodeTexts(texts, opts.clipSkip ?? 0);
  }

  /**
   * SDXL: diffusers' encode_prompt for one prompt or a list: `embeds` [B, 77, D1 + D2] are both
   * encoders' penultimate hidden states (before final_layer_norm; clipSkip k takes layer L-1-k),
   * side by side; `pooled` [B, P] is the second encoder's projected EOS output. `prompt2` goes to
   * the second encoder (default: the prompt). The caller disposes both.
   */
  async encodePromptXL(text: string | readonly string[], opts: { prompt2?: string | readonly string[]; clipSkip?: number } = {}): Promise<{ embeds: Tensor; pooled: Tensor }> {
    this.assertLive("encodePromptXL");
    if (!this.isXL) throw new Error("encodePromptXL: this is not an SDXL model; use encodePrompt()");
    const texts = typeof text === "string" ? [text] : [...text];
    const texts2 = opts.prompt2 === undefined ? texts : typeof opts.prompt2 === "string" ? texts.map(() => opts.prompt2 as string) : [...opts.prompt2];
    if (texts.length === 0 || texts2.length !== texts.length || [...texts, ...texts2].some((t) => typeof t !== "string"))
      throw new TypeError("encodePromptXL: text must be a string or a non-empty array of strings, and prompt2 one string or one per text");
    return this.encodeTextsXL(texts, texts2, opts.clipSkip ?? 0);
  }

  /** @internal Synchronous encodePromptXL (kept tensors). */
  encodeTextsXL(texts: readonly string[], texts2: readonly string[], clipSkip = 0): { embeds: Tensor; pooled: Tensor } {
    const encoders = { tokenizer: this.tokenizer, textEncoder: this.textEncoder, tokenizer2: this.tokenizer2, textEncoder2: this.textEncoder2 };
    const r = tidy(() => encodeTextsXL(encoders, texts, texts2, clipSkip));
    return { embeds: keep(r.embeds), pooled: keep(r.pooled) };
  }

  /** @internal Synchronous encodePrompt: enqueues the encoder and returns the (kept) hidden states. */
  encodeTexts(texts: readonly string[], clipSkip = 0): Tensor {
    const L = this.tokenizer.maxLength;
    const ids = this.tokenizer.encodePaddedBatch(texts);
    return keep(tidy(() => {
      const idTensor = Tensor.fromArray(ids, [texts.length, L]);
      return this.textEncoder.forward(idTensor, { clipSkip }).lastHiddenState;
    }));
  }

  /** Text to image: see GenerateOptions (text-to-image.ts). */
  generate(opts: GenerateOptions): Promise<GenerateResult> {
    return textToImage(this, opts);
  }

  /** Image to image (SDEdit): see Img2ImgOptions (image-to-image.ts). */
  img2img(opts: Img2ImgOptions): Promise<GenerateResult> {
    return imageToImage(this, opts);
  }

  /** Inpainting: repaint the white area of `mask` in `image`; see InpaintOptions (inpaint.ts). */
  inpaint(opts: InpaintOptions): Promise<GenerateResult> {
    return inpaint(this, opts);
  }

  /**
   * Latents [B, 4, h, w] (float32 NCHW, as the denoising loop leaves them: a Tensor, or the
   * `{ data, shape }` of outputType "latent") -> the VAE's decoded images, the float images and
   * the 8-bit images, one image at a time.
   */
  async decodeLatents(latents: Tensor | { data: Float32Array; shape: readonly number[] }, opts: { vaeTiling?: VaeTilingOptions } = {}): Promise<DecodeResult> {
    this.assertLive("decodeLatents");
    const t = latents instanceof Tensor ? latents : Tensor.fromArray(latents.data, latents.shape, { device: this.device });
    try {
      return await decodeLatents(this, t, undefined, opts.vaeTiling ?? null);
    } finally {
      if (t !== latents) t.dispose();
    }
  }

  /**
   * Merges a LoRA file (kohya/A1111 or diffusers/PEFT .safetensors) into the U-Net and text
   * encoder weights: W + scale·(alpha/rank)·up@down. Several stack; unloadLoras() undoes them all
   * exactly. Do not call it while a generation runs on this pipeline.
   */
  loadLora(file: string, opts: LoraOptions = {}): AppliedLora {
    this.assertLive("loadLora");
    return this.patches.apply(file, opts);
  }

  /**
   * Loads a textual-inversion embedding (.safetensors: A1111 emb_params / clip_l + clip_g, or
   * diffusers learned_embeds) under a new word, by default the file's (see textual-inversion.ts).
   */
  loadTextualInversion(file: string, opts: TextualInversionOptions = {}): LoadedEmbedding {
    this.assertLive("loadTextualInversion");
    return loadTextualInversion(this, file, opts);
  }

  /** Restores the weights as loaded (every LoRA off). */
  unloadLoras(): void {
    this.assertLive("unloadLoras");
    this.patches.restore();
  }

  /**
   * Writes the pipeline as it is now (merged LoRAs and textual-inversion words included): a path
   * ending in .safetensors gets a single-file checkpoint (original key names), any other path a
   * diffusers folder. Resolves with the absolute path. See save.ts.
   */
  save(target: string, opts: SavePipelineOptions = {}): Promise<string> {
    this.assertLive("save");
    return savePipeline(this, target, opts);
  }

  /** The LoRAs merged now, in order. */
  get loras(): readonly AppliedLora[] {
    return this.patches.list;
  }

  /** Frees every weight. The pipeline cannot be used afterwards. */
  dispose(): void {
    if (this.isDisposed) return;
    this.isDisposed = true;
    this.patches.dispose();
    this.textEncoder.dispose();
    this.textEncoder2?.dispose();
    this.unet.dispose();
    this.vae.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}
