/**
 * `train` and `train-vae`, whose implementation (lib/cli/train.ts) is an optional part of the
 * build. That module exports `trainCommand(argv)` / `trainVaeCommand(argv)`: they take the words
 * after the command name, parse them against their own flag tables (and answer --help), and
 * resolve to the exit code. Commander only routes to them here, so the flags are defined once.
 * Without the module both commands exist and say "training is not available in this build"
 * (exit code 2).
 */
import type { Command } from "commander";
import { UsageError } from "./options";

type TrainEntry = (argv: readonly string[]) => Promise<number> | number;
interface TrainModule {
  trainCommand?: TrainEntry;
  trainVaeCommand?: TrainEntry;
}

/** Thrown by the training commands when this build has no trainer. */
export class TrainingUnavailable extends UsageError {}

function loadTrainModule(): TrainModule | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require("./train") as TrainModule;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    // only "this file is not in the build" means absent; an error inside the module must surface
    if (err.code === "MODULE_NOT_FOUND" && /['"]\.\/train['"]/.test(err.message)) return null;
    throw e;
  }
}

export function registerTrainCommands(program: Command): void {
  const mod = loadTrainModule();
  const commands: [string, string, TrainEntry | undefined][] = [
    ["train", "train a text-to-image model on a folder of captioned images (--data DIR --out DIR)", mod?.trainCommand],
    ["train-vae", "train the latent autoencoder on a folder of images (--data DIR --out DIR)", mod?.trainVaeCommand],
  ];
  for (const [name, what, entry] of commands) {
    program
      .command(name)
      .description(entry ? what : `${what}; not available in this build`)
      .helpOption(entry ? false : "-h, --help")  // the trainer prints its own flag table for --help
      .allowUnknownOption()
      .allowExcessArguments()
      .action(async (_opts: unknown, cmd: Command) => {
        if (!entry) throw new TrainingUnavailable("training is not available in this build");
        const code = await entry(cmd.args);
        if (code !== 0) process.exitCode = code;
      });
  }
}
