/** `diffusekit extract-lora BASE TUNED OUT`: a fine-tune's difference from its base as a LoRA file (lib/lora/extract.ts). */
import * as fs from "fs";
import type { Command } from "commander";
import { extractLora } from "../lora/extract";
import { UsageError, integer } from "./options";

interface ExtractCommandOptions { rank: number; convRank?: number; textEncoder?: boolean; json?: boolean; quiet?: boolean }

async function extractCommand(base: string, tuned: string, out: string, opts: ExtractCommandOptions): Promise<void> {
  for (const p of [base, tuned]) {
    if (!fs.existsSync(p)) throw new UsageError(`${p}: no such folder`);
    if (!fs.statSync(p).isDirectory()) throw new UsageError(`${p}: expected a diffusers folder (convert a single file with diffusekit convert first)`);
  }
  if (!/\.safetensors$/i.test(out)) throw new UsageError(`the output must be a .safetensors file, got ${out}`);
  const t0 = performance.now();
  const r = await extractLora(base, tuned, out, { rank: opts.rank, convRank: opts.convRank, textEncoder: opts.textEncoder });
  const seconds = (performance.now() - t0) / 1000;
  if (opts.json) process.stdout.write(JSON.stringify({ ...r, rank: opts.rank, convRank: opts.convRank ?? null, seconds }) + "\n");
  else if (!opts.quiet) process.stderr.write(`wrote ${r.file} in ${seconds.toFixed(1)} s: ${r.layers} layers (${r.skipped} unchanged left out); use it with --lora ${r.file}\n`);
}

export function registerExtractLoraCommand(program: Command): void {
  program
    .command("extract-lora")
    .description("a fine-tuned model's difference from its base as a LoRA file (truncated SVD per layer)")
    .argument("<base>", "the base model (a diffusers folder)")
    .argument("<tuned>", "the fine-tuned model (a diffusers folder of the same architecture)")
    .argument("<output>", "the LoRA .safetensors file to write (kohya format)")
    .option("--rank <r>", "rank of each layer's approximation", integer(1, 1024), 16)
    .option("--conv-rank <r>", "the 3x3 convolutions too, at this rank (LoCon)", integer(1, 1024))
    .option("--text-encoder", "the text encoder's attention and MLP layers too")
    .option("--json", "print the result as JSON on stdout")
    .option("-q, --quiet", "no status on stderr")
    .addHelpText("after", `\nExample:\n  diffusekit extract-lora ./stable-diffusion-v1-5 ./my-finetune my-style.safetensors --rank 32`)
    .action((base: string, tuned: string, out: string, opts: ExtractCommandOptions) => extractCommand(base, tuned, out, opts));
}
