// Pipelines: text-to-image and image-to-image over the SD components (see stable-diffusion.ts).
export { StableDiffusionPipeline, PIPELINE_DTYPES } from "./stable-diffusion";
export type { PipelineComponents, PipelineDevice, PipelineDType } from "./stable-diffusion";
export { loadPipeline, builtinConfigDir } from "./load";
export type { LoadPipelineOptions, PipelineConfigs, VaeDTypeOption } from "./load";
export { createRandomPipeline, byteLevelTokenizer } from "./random-pipeline";
export type { RandomPipelineOptions } from "./random-pipeline";
export { SAMPLER_CHOICES } from "./text-to-image";
export type { GenerateOptions, CommonGenerateOptions, GenerateResult, StepInfo, DecodeResult } from "./text-to-image";
export type { Img2ImgOptions } from "./image-to-image";
export type { InpaintOptions } from "./inpaint";
export type { MaskInput, GrayImage } from "./mask";
export { GeneratedImage, formatParameters, readPNGText, encodePNG, decodeImageBytes, loadImage } from "./images";
export type { ImageParameters, RGBImage, ImageInput } from "./images";
export { loadControlNet } from "./load-controlnet";
export type { LoadControlNetOptions } from "./load-controlnet";
export type { ControlOptions } from "./controlnet";
export type { HiresOptions } from "./hires-fix";
