/**
 * `diffusekit generate`, `img2img` and `inpaint`: load the model (once), run with a progress bar
 * on stderr, save numbered PNGs (with the A1111-style parameters chunk), print where they went and
 * their seeds, or with --json one JSON object on stdout.
 */
import * as fs from "fs";
import * as path from "path";
import { builtinModelPath, getPipeline } from "../generate";
import { builtinPromptHint } from "./builtin-hint";
import type { GenerateResult } from "../pipelines/text-to-image";
import type { PipelineDType } from "../pipelines/stable-diffusion";
import type { VaeDTypeOption } from "../pipelines/load";
import type { HiresOptions } from "../pipelines/hires-fix";
import type { VariationOptions } from "../pipelines/variation-seed";
import { loadControlNet } from "../pipelines/load-controlnet";
import { ProgressBar, formatSeconds } from "./progress";
import { UsageError, checkSizeMultiple, resolveModel, scaleFactorOf, type ImageCommandOptions } from "./options";

export interface Img2ImgExtra {
  input: string;
  strength?: number;
  /** inpaint: the mask file (white = repaint) and whether to paste the kept pixels back. */
  mask?: string;
  keepUnmasked?: boolean;
}

/** out.png for one image; out-1.png, out-2.png, ... for several. A missing extension becomes .png. */
export function outputPaths(output: string, count: number): string[] {
  const ext = path.extname(output);
  if (ext !== "" && ext.toLowerCase() !== ".png") throw new UsageError(`-o ${output}: images are written as PNG; use a .png file name`);
  const base = ext === "" ? output : output.slice(0, -ext.length);
  const suffix = ext === "" ? ".png" : ext;
  if (count === 1) return [path.resolve(base + suffix)];
  return Array.from({ length: count }, (_, k) => path.resolve(`${base}-${k + 1}${suffix}`));
}

/** Relative to the working directory when the file is under it, else absolute. */
function displayPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

const seconds = (s: number) => `${s.toFixed(2)} s`;

export async function runImageCommand(kind: "generate" | "img2img" | "inpaint", promptWords: string[], opts: ImageCommandOptions, extra?: Img2ImgExtra,
  generateExtra: { hires?: HiresOptions; variation?: VariationOptions } = {}): Promise<void> {
  const started = performance.now();
  const prompt = promptWords.join(" ");
  const showStatus = !opts.quiet;
  const status = (line: string) => {
    if (showStatus) process.stderr.write(`${line}\n`);
  };

  // everything that can be checked without loading the model, first
  const modelPath = resolveModel(opts.model, opts.tokenizer);
  const hint = scaleFactorOf(modelPath);
  if (opts.size && hint !== null) checkSizeMultiple(opts.size, hint);
  const count = opts.num ?? 1;
  outputPaths(opts.output, count);
  if (extra && !fs.existsSync(extra.input)) throw new UsageError(`${extra.input}: no such image file`);
  if (extra?.mask !== undefined && !fs.existsSync(extra.mask)) throw new UsageError(`${extra.mask}: no such mask file`);
  for (const l of opts.lora ?? []) if (!fs.existsSync(l.file)) throw new UsageError(`--lora ${l.file}: no such file`);
  for (const e of opts.embedding ?? []) if (!fs.existsSync(e)) throw new UsageError(`--embedding ${e}: no such file`);
  if ((opts.controlnet === undefined) !== (opts.controlImage === undefined)) throw new UsageError("--controlnet and --control-image go together");
  if (opts.controlImage !== undefined && !fs.existsSync(opts.controlImage)) throw new UsageError(`--control-image ${opts.controlImage}: no such file`);

  if (modelPath === builtinModelPath()) {
    const note = builtinPromptHint(prompt, modelPath);
    if (note) status(note);
  }
  status(`loading ${modelPath}`);
  const pipe = await getPipeline({
    model: modelPath, device: opts.device, dtype: opts.dtype as PipelineDType | undefined, tokenizer: opts.tokenizer,
    vaeDtype: opts.vaeDtype as VaeDTypeOption | undefined, loras: opts.lora, embeddings: opts.embedding,
  }, kind);
  const controlModel = opts.controlnet === undefined ? null : await loadControlNet(opts.controlnet, { device: pipe.device, dtype: pipe.dtype });
  const loaded = performance.now();
  if (opts.size) checkSizeMultiple(opts.size, pipe.vaeScaleFactor);

  const bar = new ProgressBar("denoise", process.stderr, showStatus && opts.progress);
  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) process.exit(130);
    bar.clear();
    status("interrupting (Ctrl-C again to quit at once)");
    controller.abort();
  };
  process.on("SIGINT", onSigint);

  const common = {
    prompt, negativePrompt: opts.negative, steps: opts.steps, cfg: opts.cfg, sampler: opts.sampler, seed: opts.seed, numImages: opts.num,
    width: opts.size?.width, height: opts.size?.height, promptWeighting: opts.promptWeighting, vaeTiling: opts.vaeTiling,
    aestheticScore: opts.aestheticScore, negativeAestheticScore: opts.negativeAestheticScore, tiling: opts.tiling,
    controlnet: controlModel ? { model: controlModel, image: opts.controlImage!, scale: opts.controlScale } : undefined,
    signal: controller.signal,
    onStep: ({ step, total }: { step: number; total: number }) => bar.update(step, total),
  };
  const defined = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
  let result: GenerateResult;
  try {
    result = kind === "inpaint"
      ? await pipe.inpaint(defined({ ...common, image: extra!.input, mask: extra!.mask!, strength: extra!.strength, keepUnmasked: extra!.keepUnmasked }))
      : extra
        ? await pipe.img2img(defined({ ...common, image: extra.input, strength: extra.strength }))
        : await pipe.generate(defined({ ...common, ...generateExtra }));
  } catch (e) {
    bar.clear();
    throw e;
  } finally {
    process.off("SIGINT", onSigint);
    controlModel?.dispose();
  }
  bar.done();

  const paths = outputPaths(opts.output, result.images.length);
  fs.mkdirSync(path.dirname(paths[0]), { recursive: true });
  await Promise.all(result.images.map((img, k) => img.savePNG(paths[k])));
  const total = (performance.now() - started) / 1000;
  const load = (loaded - started) / 1000;

  if (opts.json) {
    const out = {
      command: kind,
      model: modelPath,
      device: pipe.device,
      dtype: pipe.dtype,
      vaeDtype: pipe.vaeDtype,
      loras: pipe.loras.map((l) => ({ name: l.name, scale: l.scale, layers: l.layers })),
      images: result.images.map((img, k) => ({ path: paths[k], seed: result.seeds[k], width: img.width, height: img.height, parameters: img.parameters ?? null })),
      seeds: result.seeds,
      timings: { load, ...result.timings, total },
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  for (let k = 0; k < paths.length; k++) {
    const img = result.images[k];
    console.log(`${displayPath(paths[k])}  seed ${result.seeds[k]}  ${img.width}x${img.height}`);
  }
  const t = result.timings;
  status(`done in ${formatSeconds(total)} (load ${seconds(load)}, encode ${seconds(t.encode)}, denoise ${seconds(t.denoise)}, decode ${seconds(t.decode)}) on ${pipe.device} ${pipe.dtype}`);
}
