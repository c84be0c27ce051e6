/**
 * loadControlNet: a ControlNet on a device, in a dtype, from a diffusers ControlNetModel folder
 * (config.json + weights) or from an original single .safetensors file (lllyasviel / A1111
 * layout, controlnet-single-file.ts), whose config is the package's SD 1.5 or SD 2.1 U-Net config
 * (chosen by the cross-attention width) unless `config` gives one.
 */
import * as path from "path";
import * as fs from "fs";
import { packageRoot } from "../native";
import { findWeights, isPickleFile, openWeightsFile, pickleRefusal, readJsonObject, type JsonObject } from "../io/model-folder";
import type { StateDictSource } from "../nn/module";
import { ControlNetModel, type ControlNetConfigJson } from "../models/controlnet";
import { controlNetSingleFileSource, isControlNetSingleFile } from "../models/controlnet-single-file";
import { resolvePipelineDevice, resolvePipelineDType } from "./load";
import type { PipelineDType } from "./stable-diffusion";

export interface LoadControlNetOptions {
  device?: "cpu" | "cuda" | "auto" | string;
  /** Default: as loadPipeline's (float16 on CUDA, float32 on the CPU); use the pipeline's. */
  dtype?: PipelineDType;
  /** Folder: load `diffusion_pytorch_model.<variant>.safetensors` (e.g. "fp16"). */
  variant?: string;
  /** Single file: its ControlNetModel config (an object, or a folder with config.json). Default: from the package's SD configs. */
  config?: string | JsonObject;
}

const OP = "loadControlNet";

/** A ControlNet from a diffusers folder (e.g. lllyasviel/sd-controlnet-canny) or an original .safetensors file. */
export async function loadControlNet(modelPath: string, opts: LoadControlNetOptions = {}): Promise<ControlNetModel> {
  if (typeof modelPath !== "string" || !fs.existsSync(modelPath))
    throw new Error(`${OP}: ${String(modelPath)} does not exist (a diffusers ControlNetModel folder, or an original ControlNet .safetensors file)`);
  const device = resolvePipelineDevice(OP, opts.device);
  const dtype = resolvePipelineDType(OP, opts.dtype, device);
  if (fs.statSync(modelPath).isDirectory()) {
    const config = readJsonObject(path.join(modelPath, "config.json"), "ControlNet config");
    if (config["_class_name"] !== undefined && config["_class_name"] !== "ControlNetModel")
      throw new Error(`${OP}: ${modelPath} holds a ${String(config["_class_name"])}, not a ControlNetModel`);
    return build(config as ControlNetConfigJson, (net) => openWeightsFile(findWeights(modelPath, { variant: opts.variant }).file), dtype, device);
  }
  if (isPickleFile(modelPath)) throw pickleRefusal(modelPath);
  const file = openWeightsFile(modelPath);
  try {
    if (!isControlNetSingleFile(file.keys()))
      throw new Error(`${OP}: ${path.basename(modelPath)} is not a ControlNet checkpoint (no input_hint_block / zero_convs keys)`);
    const config = typeof opts.config === "string" ? readJsonObject(path.join(opts.config, "config.json"), "ControlNet config")
      : opts.config ?? defaultConfig(file, path.basename(modelPath));
    return build(config as ControlNetConfigJson, (net) => controlNetSingleFileSource(file, net), dtype, device);
  } finally {
    file.close();
  }
}

function build(config: ControlNetConfigJson, source: (net: ControlNetModel) => StateDictSource & { close?(): void }, dtype: PipelineDType, device: string): ControlNetModel {
  const net = new ControlNetModel(config);
  let src: (StateDictSource & { close?(): void }) | null = null;
  try {
    src = source(net);
    net.loadStateDict(src, { dtype, device });
    return net;
  } catch (e) {
    net.dispose();
    throw e;
  } finally {
    src?.close?.();
  }
}

/** SD 1.5's or SD 2.1's U-Net config, by the width of the first cross-attention's keys. */
function defaultConfig(file: StateDictSource, name: string): JsonObject {
  const key = file.keys().find((k) => /(^|\.)input_blocks\.1\.1\.transformer_blocks\.0\.attn2\.to_k\.weight$/.test(k));
  const width = key ? file.shape(key)[1] : null;
  const family = width === 768 ? "sd15" : width === 1024 ? "sd21" : null;
  if (!family)
    throw new Error(`${OP}: ${name} is not recognised as an SD 1.x or 2.x ControlNet (cross-attention width ${width ?? "unknown"}); pass { config }`);
  return readJsonObject(path.join(packageRoot, "configs", family, "unet", "config.json"), "U-Net config");
}

