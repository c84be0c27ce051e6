#!/usr/bin/env node
// `npm run eval`: measures the built-in model (or --model DIR) on the emoji data it was trained on
// (scripts/fetch-emoji.js writes it to .cache/emoji/).
//
//   Retrieval: for a fixed list of training captions (N evenly spaced over the training emoji in
//   sort order; 256 by default, 32 with --quick), generate one 64x64 image per caption (DDIM 25
//   steps, seed 1000 + caption number, at each CFG scale), find its nearest training images by
//   features.ts's feature (32x32 pixels on white, squared Euclidean), and count how often the
//   prompted emoji is the nearest (top-1) or among the 5 nearest (top-5). Chance is k / (training
//   emoji). --ddpm adds DDPM with 1000 steps (slow: 40x the U-Net calls). Each run is done for
//   each prompt template: {caption} is the main training caption, {name} the emoji's name,
//   {a name} the name with "a"/"an" ("a red apple"). The default is both "{caption}" and
//   "{a name}" (the short prompt a person types); --prompts T (repeatable) replaces them, e.g.
//   "a picture of {a name}" for a phrasing the model never saw. The sheet uses the first.
//   VAE: PSNR of encode (posterior mean) -> decode on the held-out emoji (never trained on), and on
//   as many training emoji for comparison.
//   Contact sheet: 24 of the captions, each as [training image | cfg 1 | cfg 5] -> --sheet.
//
// Usage: node dist/eval/main.js [--quick] [--model DIR] [--data .cache/emoji] [--n 256] [--cfgs 1,5]
//          [--ddpm] [--sheet docs/builtin-contact-sheet.png] [--json .cache/eval/builtin-eval.json]
//          [--histogram W] [--batch 16] [--prompts "{caption}" --prompts "{a name}"]
import * as fs from "fs";
import * as path from "path";
import { packageRoot } from "../native";
import { loadPipeline } from "../pipelines/load";
import { encodePNG, type RGBImage } from "../pipelines/images";
import type { StableDiffusionPipeline } from "../pipelines/stable-diffusion";
import { BUILTIN_MODEL_DIR } from "../generate";
import { decodeRGBA, imagesToNchw, prepareImage } from "../train/data";
import { Tensor, tidy } from "../tensor";
import { noGrad } from "../autograd";
import { imageFeature, nearest, psnr, type FeatureOptions } from "./features";
import { contactSheet, type SheetCell } from "./sheet";

export interface EvalOptions {
  model: string;
  data: string;
  n: number;
  cfgs: number[];
  ddpm: boolean;
  steps: number;
  seed: number;
  batch: number;
  sheet: string | null;
  json: string | null;
  histogramWeight: number;
  /** Prompt templates, each with {caption}, {name} and/or {a name} filled in per emoji. */
  prompts: string[];
  log: (s: string) => void;
}

interface Entry { file: string; caption: string; split: "train" | "holdout"; name: string }

export interface RetrievalResult { prompts: string; sampler: string; steps: number; cfg: number; n: number; top1: number; top5: number; secondsPerImage: number }

export interface EvalReport {
  model: string;
  gallery: number;
  captions: number;
  retrieval: RetrievalResult[];
  vae: { heldOut: { n: number; psnr: number; psnrOfMeanMse: number }; train: { n: number; psnr: number; psnrOfMeanMse: number } };
  feature: string;
}

function parseArgs(argv: readonly string[]): EvalOptions {
  const o: EvalOptions = {
    model: BUILTIN_MODEL_DIR, data: path.join(packageRoot, ".cache", "emoji"), n: 256, cfgs: [1, 5], ddpm: false, steps: 25, seed: 1000, batch: 16,
    sheet: path.join(packageRoot, "docs", "builtin-contact-sheet.png"), json: path.join(packageRoot, ".cache", "eval", "builtin-eval.json"),
    histogramWeight: 0, prompts: ["{caption}", "{a name}"], log: (s) => process.stderr.write(s + "\n"),
  };
  let quick = false, nGiven = false, promptsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => {
      const x = argv[++i];
      if (x === undefined) throw new RangeError(`eval: ${a} needs a value`);
      return x;
    };
    const int = () => {
      const x = Number(v());
      if (!Number.isInteger(x) || x < 1) throw new RangeError(`eval: ${a} needs a positive integer`);
      return x;
    };
    if (a === "--quick") quick = true;
    else if (a === "--model") o.model = path.resolve(v());
    else if (a === "--data") o.data = path.resolve(v());
    else if (a === "--n") { o.n = int(); nGiven = true; }
    else if (a === "--cfgs") o.cfgs = v().split(",").map(Number);
    else if (a === "--ddpm") o.ddpm = true;
    else if (a === "--steps") o.steps = int();
    else if (a === "--seed") o.seed = int();
    else if (a === "--batch") o.batch = int();
    else if (a === "--sheet") { const s = v(); o.sheet = s === "none" ? null : path.resolve(s); }
    else if (a === "--json") { const s = v(); o.json = s === "none" ? null : path.resolve(s); }
    else if (a === "--histogram") o.histogramWeight = Number(v());
    else if (a === "--prompts") {
      if (!promptsGiven) o.prompts = [];
      promptsGiven = true;
      o.prompts.push(v());
    }
    else if (a === "--help" || a === "-h") {
      process.stdout.write(fs.readFileSync(__filename.replace(/\.js$/, ".js"), "utf8").split("\n").filter((l) => l.startsWith("//")).map((l) => l.slice(3)).join("\n") + "\n");
      process.exit(0);
    } else throw new RangeError(`eval: unknown option ${a}`);
  }
  if (o.cfgs.some((c) => !Number.isFinite(c))) throw new RangeError("eval: --cfgs needs comma-separated numbers");
  for (const t of o.prompts) if (!/\{(caption|name|a name)\}/.test(t)) throw new RangeError(`eval: --prompts "${t}" needs {caption}, {name} or {a name}`);
  if (quick && !nGiven) o.n = 32;
  if (quick && o.sheet && o.sheet === path.join(packageRoot, "docs", "builtin-contact-sheet.png")) o.sheet = path.join(packageRoot, ".cache", "eval", "contact-sheet-quick.png");
  return o;
}

function readEntries(dataDir: string): Entry[] {
  const file = path.join(dataDir, "emoji.jsonl");
  if (!fs.existsSync(file)) throw new Error(`eval: ${file} not found; run \`node scripts/fetch-emoji.js\` first`);
  return fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as Entry);
}

function loadImage(dataDir: string, e: Entry): RGBImage {
  const buf = fs.readFileSync(path.join(dataDir, e.split, e.file));
  return prepareImage(decodeRGBA(buf, e.file), 64);
}

/** The prompt for an emoji from a --prompts template. */
export function promptFor(template: string, e: { caption: string; name: string }): string {
  const aName = `${/^[aeiou]/.test(e.name) ? "an" : "a"} ${e.name}`;
  return template.replace(/\{caption\}/g, e.caption).replace(/\{a name\}/g, aName).replace(/\{name\}/g, e.name);
}

/** Evenly spaced indices: floor(i * total / n). */
export function evalIndices(total: number, n: number): number[] {
  const m = Math.min(n, total);
  return Array.from({ length: m }, (_, i) => Math.floor((i * total) / m));
}

async function vaePsnr(pipe: StableDiffusionPipeline, images: RGBImage[], batch: number): Promise<{ n: number; psnr: number; psnrOfMeanMse: number }> {
  let sum = 0, mseSum = 0;
  for (let i0 = 0; i0 < images.length; i0 += batch) {
    const chunk = images.slice(i0, i0 + batch);
    const R = chunk[0].width;
    const out = noGrad(() => tidy(() => {
      const x = Tensor.fromArray(imagesToNchw(chunk), [chunk.length, 3, R, R]);
      const post = pipe.vae.encode(x);
      return pipe.vae.decode(post.mean);
    }));
    const v = await out.toFloat32Array();
    out.dispose();
    const plane = R * R;
    chunk.forEach((img, b) => {
      const rec = new Uint8Array(plane * 3);
      for (let p = 0; p < plane; p++)
        for (let c = 0; c < 3; c++) rec[p * 3 + c] = Math.min(255, Math.max(0, Math.round((v[b * 3 * plane + c * plane + p] / 2 + 0.5) * 255)));
      const db = psnr(img.data, rec);
      sum += db;
      mseSum += (255 * 255) / 10 ** (db / 10);
    });
  }
  const n = images.length;
  return { n, psnr: sum / n, psnrOfMeanMse: 10 * Math.log10((255 * 255) / (mseSum / n)) };
}

export async function runEval(o: EvalOptions): Promise<EvalReport> {
  const entries = readEntries(o.data);
  const train = entries.filter((e) => e.split === "train"), held = entries.filter((e) => e.split === "holdout");
  o.log(`eval: ${o.model}; ${train.length} training emoji (the gallery), ${held.length} held out`);
  const fo: FeatureOptions = { histogramWeight: o.histogramWeight };
  const trainImages = train.map((e) => loadImage(o.data, e));
  const gallery = trainImages.map((img) => imageFeature(img, fo));
  const idx = evalIndices(train.length, o.n);
  const pipe = await loadPipeline(o.model, { device: "cpu" });
  const report: EvalReport = {
    model: o.model, gallery: train.length, captions: idx.length, retrieval: [],
    vae: { heldOut: { n: 0, psnr: NaN, psnrOfMeanMse: NaN }, train: { n: 0, psnr: NaN, psnrOfMeanMse: NaN } },
    feature: `32x32 pixels on white${o.histogramWeight > 0 ? ` + 4x4x4 colour histogram x${o.histogramWeight}` : ""}, squared Euclidean`,
  };
  try {
    const runs: { prompts: string; sampler: string; steps: number; cfg: number }[] = [];
    for (const prompts of o.prompts) {
      for (const cfg of o.cfgs) runs.push({ prompts, sampler: "ddim", steps: o.steps, cfg });
      if (o.ddpm) for (const cfg of o.cfgs) runs.push({ prompts, sampler: "ddpm", steps: 1000, cfg });
    }
    const sheetImages = new Map<number, RGBImage[]>();
    for (const run of runs) {
      let top1 = 0, top5 = 0;
      const t0 = Date.now();
      for (let i0 = 0; i0 < idx.length; i0 += o.batch) {
        const part = idx.slice(i0, i0 + o.batch);
        const r = await pipe.generate({
          prompt: part.map((i) => promptFor(run.prompts, train[i])), steps: run.steps, cfg: run.cfg, sampler: run.sampler, seed: o.seed + i0, width: 64, height: 64,
          // SD's "leading" spacing with steps_offset 1 asks for t = 1000 at 1000 steps (diffusers'
          // DDPMScheduler fails there too); "trailing" gives the full 999..0 ancestral chain
          schedulerConfig: run.sampler === "ddpm" ? { timestep_spacing: "trailing" } : undefined,
        });
        r.images.forEach((img, k) => {
          const want = part[k];
          const nn = nearest(imageFeature(img, fo), gallery, 5);
          if (nn[0] === want) top1++;
          if (nn.includes(want)) top5++;
          if (run.sampler === "ddim" && run.prompts === o.prompts[0]) {
            const list = sheetImages.get(i0 + k) ?? [];
            list.push(img);
            sheetImages.set(i0 + k, list);
          }
        });
      }
      const res: RetrievalResult = { ...run, n: idx.length, top1: top1 / idx.length, top5: top5 / idx.length, secondsPerImage: (Date.now() - t0) / 1000 / idx.length };
      report.retrieval.push(res);
      o.log(`  "${run.prompts}" ${run.sampler} ${run.steps} steps cfg ${run.cfg}: top-1 ${(100 * res.top1).toFixed(1)}%  top-5 ${(100 * res.top5).toFixed(1)}%  (${res.secondsPerImage.toFixed(2)} s/image)`);
    }
    report.vae.heldOut = await vaePsnr(pipe, held.map((e) => loadImage(o.data, e)), o.batch);
    report.vae.train = await vaePsnr(pipe, evalIndices(train.length, held.length).map((i) => trainImages[i]), o.batch);
    o.log(`  VAE PSNR: held-out ${report.vae.heldOut.psnr.toFixed(2)} dB (n=${report.vae.heldOut.n}), training ${report.vae.train.psnr.toFixed(2)} dB (n=${report.vae.train.n})`);
    if (o.sheet) {
      const pick = evalIndices(idx.length, 24);
      // labelled with the emoji's name, or with the prompt when it is not the main caption
      const label = (e: Entry) => (o.prompts[0] === "{caption}" ? e.name : promptFor(o.prompts[0], e));
      const cells: SheetCell[] = pick.map((j) => ({ label: label(train[idx[j]]), images: [trainImages[idx[j]], ...(sheetImages.get(j) ?? [])] }));
      const header = `training image | ${o.cfgs.map((c) => `cfg ${c}`).join(" | ")}   (ddim ${o.steps} steps, seed ${o.seed}+i${o.prompts[0] === "{caption}" ? "" : ", the prompt under each"})`;
      const sheet = contactSheet(cells, { columns: 4, tile: 64, header, scale: 1 });
      fs.mkdirSync(path.dirname(o.sheet), { recursive: true });
      fs.writeFileSync(o.sheet, encodePNG(sheet));
      o.log(`  contact sheet: ${o.sheet}`);
    }
  } finally {
    pipe.dispose();
  }
  if (o.json) {
    fs.mkdirSync(path.dirname(o.json), { recursive: true });
    fs.writeFileSync(o.json, JSON.stringify(report, null, 2) + "\n");
  }
  return report;
}

export function formatReport(r: EvalReport): string {
  const w = Math.max(7, ...r.retrieval.map((x) => x.prompts.length));
  const lines = [
    `model ${r.model}`,
    `retrieval among ${r.gallery} training emoji, ${r.captions} emoji; feature: ${r.feature}; chance top-1 ${(100 / r.gallery).toFixed(2)}%, top-5 ${(500 / r.gallery).toFixed(2)}%`,
    `${"prompts".padEnd(w)}  sampler  steps  cfg   top-1    top-5   s/image`,
    ...r.retrieval.map((x) => `${x.prompts.padEnd(w)}  ${x.sampler.padEnd(8)} ${String(x.steps).padStart(5)}  ${String(x.cfg).padStart(3)}  ${(100 * x.top1).toFixed(1).padStart(5)}%  ${(100 * x.top5).toFixed(1).padStart(5)}%  ${x.secondsPerImage.toFixed(2).padStart(7)}`),
    `VAE reconstruction PSNR: held-out ${r.vae.heldOut.psnr.toFixed(2)} dB (n=${r.vae.heldOut.n}; ${r.vae.heldOut.psnrOfMeanMse.toFixed(2)} dB of the mean MSE), training ${r.vae.train.psnr.toFixed(2)} dB (n=${r.vae.train.n})`,
  ];
  return lines.join("\n");
}

if (require.main === module) {
  (async () => {
    try {
      const r = await runEval(parseArgs(process.argv.slice(2)));
      process.stdout.write(formatReport(r) + "\n");
    } catch (e) {
      process.stderr.write(`eval: ${(e as Error).message}\n`);
      process.exitCode = e instanceof RangeError || e instanceof TypeError ? 2 : 1;
    }
  })();
}
