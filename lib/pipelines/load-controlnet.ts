/** loadControlNet: a diffusers ControlNetModel folder (config.json + weights) on a device, in a dtype. */
import * as path from "path";
import * as fs from "fs";
import { findWeights, openWeightsFile, readJsonObject } from "../io/model-folder";
import { ControlNetModel, type ControlNetConfigJson } from "../models/controlnet";
import { resolvePipelineDevice, resolvePipelineDType } from "./load";
import type { PipelineDType } from "./stable-diffusion";

export interface LoadControlNetOptions {
  device?: "cpu" | "cuda" | "auto" | string;
  /** Default: as loadPipeline's (float16 on CUDA, float32 on the CPU); use the pipeline's. */
  dtype?: PipelineDType;
  /** Load `diffusion_pytorch_model.<variant>.safetensors` (e.g. "fp16"). */
  variant?: string;
}

/** A ControlNet from a diffusers folder (config.json + diffusion_pytorch_model.safetensors), e.g. lllyasviel/sd-controlnet-canny. */
export async function loadControlNet(dir: string, opts: LoadControlNetOptions = {}): Promise<ControlNetModel> {
  const op = "loadControlNet";
  if (typeof dir !== "string" || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
    throw new Error(`${op}: ${String(dir)} is not a folder (a diffusers ControlNetModel folder: config.json and diffusion_pytorch_model.safetensors)`);
  const device = resolvePipelineDevice(op, opts.device);
  const dtype = resolvePipelineDType(op, opts.dtype, device);
  const config = readJsonObject(path.join(dir, "config.json"), "ControlNet config");
  if (config["_class_name"] !== undefined && config["_class_name"] !== "ControlNetModel")
    throw new Error(`${op}: ${dir} holds a ${String(config["_class_name"])}, not a ControlNetModel`);
  const net = new ControlNetModel(config as ControlNetConfigJson);
  const source = openWeightsFile(findWeights(dir, { variant: opts.variant }).file);
  try {
    net.loadStateDict(source, { dtype, device });
  } catch (e) {
    net.dispose();
    throw e;
  } finally {
    source.close();
  }
  return net;
}

