#!/usr/bin/env node
// The `diffusekit` command. Thin: parses arguments, calls the library, prints. Errors are one line
// on stderr; exit codes: 0 ok, 1 failure while running, 2 bad command line, 130 interrupted.
import { Command, CommanderError, Option } from "commander";
import { version } from "../version";
import { infoCommand } from "./info";
import { runImageCommand } from "./images";
import { UsageError, addImageOptions, integer, number, type ImageCommandOptions } from "./options";
import { registerTrainCommands } from "./optional-commands";
import { registerConvertCommand } from "./convert";
import { registerMergeCommand } from "./merge";
import { registerExtractLoraCommand } from "./extract-lora";

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name("diffusekit")
    .description("Stable Diffusion image generation and training on CPU and CUDA")
    .version(version, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .exitOverride()
    .configureOutput({
      // commander's own errors ("error: unknown option ...") read like ours
      outputError: (str, write) => write(str.replace(/^error: /, "diffusekit: ").replace(/\n\(Did you mean (.*)\?\)/, " (did you mean $1?)")),
    })
    .showSuggestionAfterError();

  addImageOptions(
    program
      .command("generate")
      .description("text to image")
      .argument("<prompt...>", "what to draw (quote it, or give several words)"),
  )
    .option("--hires <scale>", "hires fix: redraw at this scale (e.g. 2) after the first pass", number(1, 4, { exclusiveMin: true }))
    .option("--hires-strength <s>", "how much the hires pass redraws, in (0, 1] (default 0.5)", number(0, 1, { exclusiveMin: true }))
    .option("--tiling", "seamless tiling: the image continues across its edges (A1111's Tiling)")
    .option("--variation-seed <n>", "A1111 variation seed: image k starts from noise between seed + k's and this seed + k's", integer(0, 2 ** 53 - 1 - 256))
    .option("--variation-strength <s>", "how far towards the variation seed's noise, in [0, 1] (default 0.1 with --variation-seed)", number(0, 1))
    .addHelpText("after", `\nExample:\n  diffusekit generate "a cat wearing a hat" --steps 30 --cfg 7.5 --seed 42 -o cat.png`)
    .action((prompt: string[], opts: ImageCommandOptions & { hires?: number; hiresStrength?: number; variationSeed?: number; variationStrength?: number }) => {
      if (opts.variationStrength !== undefined && opts.variationSeed === undefined) throw new UsageError("--variation-strength goes with --variation-seed");
      return runImageCommand("generate", prompt, opts, undefined, {
        hires: opts.hires === undefined ? undefined : { scale: opts.hires, strength: opts.hiresStrength },
        variation: opts.variationSeed === undefined ? undefined : { seed: opts.variationSeed, strength: opts.variationStrength ?? 0.1 },
      });
    });

  addImageOptions(
    program
      .command("img2img")
      .description("image to image: redraw INPUT (PNG or JPEG) towards the prompt")
      .argument("<input>", "the starting image")
      .argument("<prompt...>", "what to draw"),
  )
    .addOption(new Option("--strength <s>", "how much to change the image, in (0, 1] (default: 0.8)").argParser(number(0, 1, { exclusiveMin: true })))
    .option("--tiling", "seamless tiling: the image continues across its edges (A1111's Tiling)")
    .addHelpText("after", `\nExample:\n  diffusekit img2img sketch.png "an oil painting of a lighthouse" --strength 0.6 -o lighthouse.png`)
    .action((input: string, prompt: string[], opts: ImageCommandOptions & { strength?: number }) =>
      runImageCommand("img2img", prompt, opts, { input, strength: opts.strength }));

  addImageOptions(
    program
      .command("inpaint")
      .description("inpainting: repaint the white area of MASK in INPUT (PNG or JPEG) towards the prompt")
      .argument("<input>", "the image to repaint")
      .argument("<mask>", "white = repaint, black = keep (any image; converted to grey)")
      .argument("<prompt...>", "what to draw in the masked area"),
  )
    .addOption(new Option("--strength <s>", "below 1 the masked area starts from the image noised to that point (default: 1)").argParser(number(0, 1, { exclusiveMin: true })))
    .option("--keep-unmasked", "paste the original pixels back outside the mask")
    .addHelpText("after", `\nExample:\n  diffusekit inpaint room.png sofa-mask.png "a red leather sofa" --model ./sd-v1-5-inpainting -o room-red-sofa.png`)
    .action((input: string, mask: string, prompt: string[], opts: ImageCommandOptions & { strength?: number; keepUnmasked?: boolean }) =>
      runImageCommand("inpaint", prompt, opts, { input, mask, strength: opts.strength, keepUnmasked: opts.keepUnmasked }));

  registerTrainCommands(program);
  registerConvertCommand(program);
  registerMergeCommand(program);
  registerExtractLoraCommand(program);

  program
    .command("info")
    .description("version, devices (CPU ISA and threads; CUDA name, memory, capability), build flags, built-in model")
    .option("--json", "print machine-readable information on stdout")
    .action((opts: { json?: boolean }) => infoCommand(opts));

  return program;
}

function report(message: string): void {
  process.stderr.write(`diffusekit: ${message}\n`);
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  if (argv.length === 0) {
    program.outputHelp();
    return 0;
  }
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_USAGE;  // help/version exit 0; commander already printed the error
    const err = e as Error;
    if (process.env.DIFFUSEKIT_DEBUG) process.stderr.write(`${err.stack ?? err}\n`);
    if (err instanceof UsageError) {
      report(err.message);
      return EXIT_USAGE;
    }
    if (err?.name === "AbortError") {
      report("interrupted");
      return EXIT_INTERRUPTED;
    }
    // the library's range errors (a value out of range) are mistakes in the command line too
    report(err?.message ?? String(e));
    return err instanceof RangeError ? EXIT_USAGE : EXIT_FAILURE;
  }
}

if (require.main === module) {
  // `diffusekit --help | head`: a reader that goes away ends the output, not with a stack trace
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
