/**
 * `diffusekit convert INPUT OUTPUT`: a model rewritten in the other layout, optionally with LoRAs
 * merged and textual-inversion words added. INPUT is a diffusers folder or a single .safetensors
 * checkpoint; OUTPUT ending in .safetensors gets a single file, anything else a diffusers folder.
 * The weights keep the input's precision unless --save-dtype says otherwise.
 */
import * as fs from "fs";
import * as path from "path";
import { Option, type Command } from "commander";
import { loadPipeline, openSingleFile } from "../pipelines/load";
import { folderToSingleFile, singleFileToFolder } from "../pipelines/convert-files";
import { prepareFolder } from "../pipelines/save";
import { SAVE_DTYPES, storedDType, type SaveDType } from "../io/module-weights";
import { UsageError, collectLora } from "./options";

interface ConvertCommandOptions {
  tokenizer?: string;
  configs?: string;
  variant?: string;
  saveDtype?: SaveDType;
  saveVariant?: string;
  textEncoderFormat?: "transformers" | "openclip";
  lora?: { file: string; scale: number }[];
  embedding?: string[];
  json?: boolean;
  quiet?: boolean;
}

async function convertCommand(input: string, output: string, opts: ConvertCommandOptions): Promise<void> {
  const src = path.resolve(input);
  if (!fs.existsSync(src)) throw new UsageError(`${input}: no such file or folder`);
  const isFile = fs.statSync(src).isFile();
  if (isFile && !/\.safetensors$/i.test(src)) throw new UsageError(`${input}: expected a diffusers model folder or a .safetensors checkpoint`);
  if (isFile && opts.tokenizer === undefined && opts.configs === undefined)
    throw new UsageError(`${input} is a single-file checkpoint, which has no tokenizer: pass --tokenizer DIR (or --configs DIR with a tokenizer/ folder)`);
  if (!isFile && (opts.tokenizer !== undefined || opts.configs !== undefined)) throw new UsageError("--tokenizer and --configs are for a single-file input");
  if (isFile && opts.variant !== undefined) throw new UsageError("--variant picks a diffusers folder's weight files; the input is a single file");
  for (const l of opts.lora ?? []) if (!fs.existsSync(l.file)) throw new UsageError(`--lora ${l.file}: no such file`);
  for (const e of opts.embedding ?? []) if (!fs.existsSync(e)) throw new UsageError(`--embedding ${e}: no such file`);
  const dst = path.resolve(output);
  if (dst === src) throw new UsageError("the output must differ from the input");
  const toFile = /\.safetensors$/i.test(dst);
  if (toFile && opts.saveVariant !== undefined) throw new UsageError("--save-variant names a diffusers folder's weight files; the output is a single file");
  if (!toFile && opts.textEncoderFormat !== undefined) throw new UsageError("--text-encoder-format is for a single-file output");

  const status = (s: string) => { if (!opts.quiet && !opts.json) process.stderr.write(`${s}\n`); };
  const dtype = opts.saveDtype ?? storedDType(src, opts.variant);
  const t0 = performance.now();
  const report = (format: string, loras: { name: string; scale: number }[], embeddings: string[]) => {
    const seconds = (performance.now() - t0) / 1000;
    if (opts.json) process.stdout.write(JSON.stringify({ input: src, output: dst, format, dtype, loras, embeddings, seconds }) + "\n");
    else status(`wrote ${dst} in ${seconds.toFixed(1)} s`);
  };
  // nothing to merge and the layout changes: file to file, one tensor at a time, no models built
  if (!opts.lora?.length && !opts.embedding?.length && isFile !== toFile) {
    status(`writing ${dst} (${dtype}) from ${src}`);
    if (toFile) {
      if (fs.existsSync(dst) && fs.statSync(dst).isDirectory()) throw new UsageError(`${output} is a folder`);
      await folderToSingleFile(src, dst, dtype, { variant: opts.variant, textEncoderFormat: opts.textEncoderFormat });
    } else {
      prepareFolder(dst);
      const sf = openSingleFile("convert", src, { tokenizer: opts.tokenizer, configs: opts.configs });
      try {
        await singleFileToFolder(sf, dst, dtype, opts.saveVariant);
      } finally {
        sf.close();
      }
    }
    report(toFile ? "single-file" : "diffusers", [], []);
    return;
  }
  status(`loading ${src}`);
  const pipe = await loadPipeline(src, { device: "cpu", dtype: "float32", variant: opts.variant, tokenizer: opts.tokenizer, configs: opts.configs });
  try {
    for (const l of opts.lora ?? []) pipe.loadLora(l.file, { scale: l.scale });
    const words = (opts.embedding ?? []).map((e) => pipe.loadTextualInversion(e).token);
    status(`writing ${dst} (${dtype})`);
    await pipe.save(dst, { dtype, variant: opts.saveVariant, textEncoderFormat: opts.textEncoderFormat });
    report(toFile ? "single-file" : "diffusers", pipe.loras.map((l) => ({ name: l.name, scale: l.scale })), words);
  } finally {
    pipe.dispose();
  }
}

export function registerConvertCommand(program: Command): void {
  program
    .command("convert")
    .description("rewrite a model as a diffusers folder or a single .safetensors file (LoRAs and embeddings can be merged in)")
    .argument("<input>", "a diffusers model folder or a single-file .safetensors checkpoint")
    .argument("<output>", "a .safetensors path (single file, original key names) or a folder (diffusers layout)")
    .option("--tokenizer <dir>", "tokenizer folder, for a single-file input")
    .option("--configs <dir>", "folder with unet/, vae/, text_encoder/, scheduler/ configs, for a single-file input (default: the SD1.5 / SD2.1 / SDXL configs the file matches)")
    .option("--variant <name>", "read a folder's <weights>.<name>.safetensors (e.g. fp16)")
    .addOption(new Option("--save-dtype <type>", "the output's weight precision (default: the input's)").choices(SAVE_DTYPES))
    .option("--save-variant <name>", "write <weights>.<name>.safetensors in the output folder (e.g. fp16)")
    .addOption(new Option("--text-encoder-format <format>", "single-file SD1/SD2 output: the text encoder's key names (default: openclip for a 1024-wide encoder, else transformers)").choices(["transformers", "openclip"]))
    .option("--lora <file[:scale]>", "merge a LoRA into the weights at this scale (default 1); repeatable", collectLora)
    .option("--embedding <file>", "add a textual-inversion embedding's word (folder output only); repeatable", (v: string, prev: string[] = []) => [...prev, v])
    .option("--json", "print the result as JSON on stdout")
    .option("-q, --quiet", "no status on stderr")
    .addHelpText("after", `\nExamples:\n  diffusekit convert v1-5-pruned-emaonly.safetensors ./sd15 --tokenizer ./sd15-tokenizer\n  diffusekit convert ./sd15 sd15-style.safetensors --lora style.safetensors:0.8 --save-dtype float16`)
    .action((input: string, output: string, opts: ConvertCommandOptions) => convertCommand(input, output, opts));
}
