// diffusekit: Stable-Diffusion-class image generation and training for Node.js.
export { Tensor, tidy, keep } from "./tensor";
export type { DType, DeviceName, TensorOptions, TensorData } from "./tensor";
export { devices, resolveDevice, memoryStats, resetPeakMemory, emptyCache, synchronize, buildInfo } from "./devices";
export type { DeviceInfo, CpuDeviceInfo, CudaDeviceInfo, MemoryStats, BuildInfo } from "./devices";
export * as ops from "./ops";
export { version } from "./version";
export * as nn from "./nn";
export { CLIPTextModel } from "./models/clip-text";
export { UNet2DConditionModel } from "./models/unet-2d-condition";
export { AutoencoderKL } from "./models/autoencoder-kl";
export { CLIPTokenizer } from "./tokenizers/clip";
export { SafetensorsFile, writeSafetensors, serializeSafetensors } from "./io/safetensors";
export { SafetensorsStateDict } from "./io/state-dict";
export { ModelFolder } from "./io/model-folder";
export { TorchGenerator } from "./random/torch-generator";
export { createScheduler, SAMPLER_NAMES } from "./schedulers";
export type { Scheduler } from "./schedulers/scheduler";
export { loadPipeline, savePipeline, createRandomPipeline, StableDiffusionPipeline, SAMPLER_CHOICES, GeneratedImage, readPNGText, loadControlNet } from "./pipelines";
export type { ControlOptions, LoadControlNetOptions, HiresOptions, SavePipelineOptions, SaveDType } from "./pipelines";
export { ControlNetModel } from "./models/controlnet";
export type {
  LoadPipelineOptions, PipelineConfigs, VaeDTypeOption, RandomPipelineOptions, PipelineDType, PipelineDevice, GenerateOptions, CommonGenerateOptions,
  GenerateResult, StepInfo, DecodeResult, Img2ImgOptions, InpaintOptions, MaskInput, GrayImage, ImageParameters, RGBImage, ImageInput,
} from "./pipelines";
export type { SamplerName, NoiseSource } from "./schedulers";
export { backward, requireGrad, zeroGrad, noGrad, enableGrad, isGradEnabled } from "./autograd";
export { AdamW, EMA, clipGradNorm } from "./train/optim";
export { generate, img2img, inpaint, getPipeline, releasePipelines, builtinModelPath, BUILTIN_MODEL_DIR, NoBuiltinModelError } from "./generate";
export type { ModelOptions, TopLevelGenerateOptions, TopLevelImg2ImgOptions } from "./generate";
export { train, trainVae } from "./train";
export type { AppliedLora, LoraOptions } from "./lora/apply";
export type { LoadedEmbedding, TextualInversionOptions } from "./pipelines/textual-inversion";
export type { TrainOptions, TrainResult, TrainVaeOptions, TrainVaeResult } from "./train";
