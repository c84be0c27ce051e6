/**
 * Model files rewritten in the other layout without building the models: a diffusers folder as a
 * single file (original key names) and a single file as a diffusers folder, tensor by tensor, so
 * the memory is one tensor's whatever the model's size. pipe.save writes single files through the
 * first (from a folder it writes first); `diffusekit convert` uses both when nothing is merged in.
 */
import * as fs from "fs";
import * as path from "path";
import { ModelFolder, stableDiffusionModelIndex, weightsFileName, type JsonObject } from "../io/model-folder";
import { writeSourceWeights, type SaveDType } from "../io/module-weights";
import { renameStateDict, type HostStateDictSource } from "../io/state-dict";
import { renameLegacyVaeKey } from "../models/autoencoder-kl";
import {
  convertDiffusersToSingleFile, SDXL_TEXT_PREFIX_1, SDXL_TEXT_PREFIX_2, TEXT_PREFIX_OPENCLIP, TEXT_PREFIX_TRANSFORMERS, type TextEncoderFormat,
} from "../models/single-file";
import { tokenizerFiles, writeTokenizerFiles } from "../tokenizers/clip-files";
import { writeJsonFile } from "../io/files";
import type { SingleFileSources } from "./load";

/** The union of several sources with disjoint keys. */
function union(sources: HostStateDictSource[]): HostStateDictSource {
  const owner = new Map<string, HostStateDictSource>();
  for (const s of sources) for (const k of s.keys()) owner.set(k, s);
  const of = (k: string) => {
    const s = owner.get(k);
    if (!s) throw new Error(`single file: no tensor ${k}`);
    return s;
  };
  return { keys: () => [...owner.keys()], shape: (k) => of(k).shape(k), readFloat32: (k) => of(k).readFloat32(k), load: (k, o) => of(k).load(k, o) };
}

/**
 * A diffusers folder (SD 1.x/2.x or SDXL base) as one single file. SD's text encoder is written
 * with transformers names, or OpenCLIP's (SD 2.x) when `textEncoderFormat` says so (default:
 * OpenCLIP for a 1024-wide encoder); SDXL's as conditioner.embedders.0 / .1.
 */
export async function folderToSingleFile(dir: string, file: string, dtype: SaveDType, opts: { variant?: string; textEncoderFormat?: TextEncoderFormat } = {}): Promise<void> {
  const folder = ModelFolder.open(dir);
  if (!folder.has("text_encoder")) throw new Error(`convert: ${dir} has no first text encoder (an SDXL refiner): not written as a single file`);
  const xl = folder.has("text_encoder_2");
  if (opts.textEncoderFormat !== undefined && xl) throw new RangeError(`textEncoderFormat does not apply to SDXL, whose single files hold both formats`);
  const opened: { close(): void }[] = [];
  const open = (name: string, mapKey?: (k: string) => string | null) => {
    const s = folder.weights(name, { variant: opts.variant, mapKey });
    opened.push(s);
    return s;
  };
  try {
    const te = folder.config("text_encoder");
    const configs = { unet: folder.config("unet"), vae: folder.config("vae"), textEncoder: te };
    const sources = { unet: open("unet"), vae: open("vae", renameLegacyVaeKey), textEncoder: open("text_encoder") };
    let all: HostStateDictSource;
    if (xl) {
      const main = convertDiffusersToSingleFile(sources, configs, { textEncoderFormat: "transformers" });
      const second = convertDiffusersToSingleFile({ textEncoder: open("text_encoder_2") }, { textEncoder: folder.config("text_encoder_2") }, { textEncoderFormat: "openclip" });
      all = union([
        renameStateDict(main, (k) => (k.startsWith(TEXT_PREFIX_TRANSFORMERS) ? SDXL_TEXT_PREFIX_1 + k.slice(TEXT_PREFIX_TRANSFORMERS.length) : k)),
        renameStateDict(second, (k) => SDXL_TEXT_PREFIX_2 + k.slice(TEXT_PREFIX_OPENCLIP.length)),
      ]);
    } else {
      const format = opts.textEncoderFormat ?? (te["hidden_size"] === 1024 ? "openclip" : "transformers");
      all = convertDiffusersToSingleFile(sources, configs, { textEncoderFormat: format });
    }
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await writeSourceWeights(file, all, dtype);
  } finally {
    for (const s of opened) s.close();
  }
}

/** An opened single file (load.ts's openSingleFile) as a diffusers folder; the caller closes it. */
export async function singleFileToFolder(sf: SingleFileSources, dir: string, dtype: SaveDType, variant?: string): Promise<void> {
  const { configs, sources } = sf;
  const component = async (name: string, config: JsonObject, base: string, source: HostStateDictSource) => {
    fs.mkdirSync(path.join(dir, name), { recursive: true });
    await writeSourceWeights(path.join(dir, name, weightsFileName(base, variant)), source, dtype);
    writeJsonFile(path.join(dir, name, "config.json"), config);
  };
  const scheduler = configs.scheduler;
  const schedulerClass = typeof scheduler["_class_name"] === "string" ? scheduler["_class_name"] : "PNDMScheduler";
  writeJsonFile(path.join(dir, "scheduler", "scheduler_config.json"), { _class_name: schedulerClass, ...scheduler });
  writeTokenizerFiles(path.join(dir, "tokenizer"), tokenizerFiles(sf.tokenizer));
  await component("text_encoder", { ...configs.textEncoder, architectures: ["CLIPTextModel"], torch_dtype: dtype }, "model", sources.textEncoder);
  if (sf.xl) {
    writeTokenizerFiles(path.join(dir, "tokenizer_2"), tokenizerFiles(sf.tokenizer2!));
    await component("text_encoder_2", { ...configs.textEncoder2!, architectures: ["CLIPTextModelWithProjection"], torch_dtype: dtype }, "model", sources.textEncoder2!);
  }
  await component("unet", { _class_name: "UNet2DConditionModel", ...configs.unet }, "diffusion_pytorch_model", sources.unet);
  await component("vae", { _class_name: "AutoencoderKL", ...configs.vae }, "diffusion_pytorch_model", sources.vae);
  const inChannels = typeof configs.unet["in_channels"] === "number" ? configs.unet["in_channels"] : 4;
  const latent = typeof configs.vae["latent_channels"] === "number" ? configs.vae["latent_channels"] : 4;
  // last: a folder without it is not taken for a pipeline
  writeJsonFile(path.join(dir, "model_index.json"), stableDiffusionModelIndex({ schedulerClass, xl: sf.xl, inpainting: inChannels === 2 * latent + 1 }));
}
