// Training: train() (text-to-image latent diffusion, diffusers layout out), trainVae() (the
// autoencoder), datasets (image + caption folders, the built-in shapes set), objectives and the
// optimisers.
export { train } from "./trainer";
export type { TrainOptions, TrainResult } from "./trainer";
export type { TextualInversionTrainOptions, TextualInversionTemplate } from "./textual-inversion";
export { trainVae } from "./vae-trainer";
export type { TrainVaeOptions, TrainVaeResult } from "./vae-trainer";
export type { TrainLogInfo } from "./loop";
export {
  openImageFolder, InMemoryDataset, EpochSampler, sampleCaption, decodeRGBA, compositeOver, resampleRGB, prepareImage, imagesToNchw, parseColour,
  RESAMPLE_METHODS,
} from "./data";
export type { TrainingDataset, ImageFolderOptions, Colour, ResampleMethod, SamplerState, RGBAImage } from "./data";
export { createShapesDataset, writeShapesDataset, renderShapes, SHAPE_COLOURS, SHAPE_KINDS } from "./shapes";
export type { ShapesOptions, ShapeSpec } from "./shapes";
export {
  addNoise, velocity, diffusionTarget, computeSnr, minSnrWeights, diffusionLoss, dropConditions, klDivergence, gradientDifference,
  vaeLoss, samplePosterior, noiseCoefficients, TRAIN_PREDICTION_TYPES, RECONSTRUCTION_LOSSES,
} from "./objectives";
export type { TrainPredictionType, ReconstructionLoss, VaeLossOptions, DiffusionLossOptions } from "./objectives";
export { AdamW, EMA, clipGradNorm, gradNorms, learningRateAt, LR_SCHEDULES } from "./optim";
export type { AdamWOptions, EMAOptions, LrSchedule, LrScheduleName } from "./optim";
export { unetConfig, textEncoderConfig, vaeConfig, schedulerConfig, MODEL_SIZES } from "./presets";
export type { ModelSize } from "./presets";
export { trimTokenizer, readTokenizerFiles, writeTokenizerFiles, byteLevelTokenizerFiles, tokenizerFromFiles } from "./tokenizer";
export type { TokenizerFiles } from "./tokenizer";
export { Rng, mixSeed } from "./rng";
export { initParameters } from "./init";
