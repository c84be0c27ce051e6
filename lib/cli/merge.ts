/**
 * `diffusekit merge A B OUT`: A1111's Checkpoint Merger (weighted sum, or add difference with
 * --add-difference C), file to file, one tensor at a time (lib/pipelines/merge-models.ts).
 */
import * as fs from "fs";
import * as path from "path";
import { Option, type Command } from "commander";
import { mergeModels } from "../pipelines/merge-models";
import { SAVE_DTYPES, type SaveDType } from "../io/module-weights";
import { UsageError, number } from "./options";
import { storedDType } from "../io/module-weights";

interface MergeCommandOptions { alpha: number; addDifference?: string; saveDtype?: SaveDType; variant?: string; json?: boolean; quiet?: boolean }

async function mergeCommand(a: string, b: string, out: string, opts: MergeCommandOptions): Promise<void> {
  for (const p of [a, b, ...(opts.addDifference ? [opts.addDifference] : [])]) if (!fs.existsSync(p)) throw new UsageError(`${p}: no such file or folder`);
  const t0 = performance.now();
  const dtype = opts.saveDtype ?? storedDType(path.resolve(a), opts.variant);
  const method = opts.addDifference ? "add-difference" : "weighted";
  const r = await mergeModels(a, b, out, { dtype, method, alpha: opts.alpha, c: opts.addDifference, variant: opts.variant });
  const seconds = (performance.now() - t0) / 1000;
  if (opts.json) process.stdout.write(JSON.stringify({ output: path.resolve(out), method, alpha: opts.alpha, dtype, ...r, seconds }) + "\n");
  else if (!opts.quiet) process.stderr.write(`wrote ${path.resolve(out)} in ${seconds.toFixed(1)} s: ${r.merged} tensors merged, ${r.copied} taken from A\n`);
}

export function registerMergeCommand(program: Command): void {
  program
    .command("merge")
    .description("merge two models as A1111's checkpoint merger: A·(1-α) + B·α, or A + (B - C)·α with --add-difference C")
    .argument("<a>", "the first model (a .safetensors single file or a diffusers folder)")
    .argument("<b>", "the second model (the same kind as A)")
    .argument("<output>", "a .safetensors file (single-file inputs) or a folder (folders)")
    .option("--alpha <a>", "B's weight, or the difference's scale", number(-Infinity), 0.5)
    .option("--add-difference <c>", "add (B - C)·α to A instead (C: the model B was fine-tuned from)")
    .addOption(new Option("--save-dtype <type>", "the output's weight precision (default: A's)").choices(SAVE_DTYPES))
    .option("--variant <name>", "folders: read <weights>.<name>.safetensors (e.g. fp16)")
    .option("--json", "print the result as JSON on stdout")
    .option("-q, --quiet", "no status on stderr")
    .addHelpText("after", `\nExamples:\n  diffusekit merge anime.safetensors photo.safetensors mix.safetensors --alpha 0.3\n  diffusekit merge sd15-inpainting.safetensors my-model.safetensors my-inpainting.safetensors --add-difference v1-5.safetensors --alpha 1`)
    .action((a: string, b: string, out: string, opts: MergeCommandOptions) => mergeCommand(a, b, out, opts));
}
