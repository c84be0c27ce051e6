#!/usr/bin/env node
/**
 * SD networks in diffusekit and in ONNX Runtime on this machine, same weights, same inputs:
 *
 *   npm i --no-save onnxruntime-node        (once: ORT is not a dependency of the package;
 *                                           or install it elsewhere and set DIFFUSEKIT_ORT_DIR)
 *   node dist/bench/ort-compare.js [--model unet|vae] [--config configs/sd15] [--size 64] [--batch 2]
 *                                  [--runs 2] [--no-bf16] [--weights FILE] [--json FILE]
 *
 * The U-Net step (--size: latent side, 64 = 512x512) or the VAE decode (latents of --size) get
 * random SD weights (the bench's RandomWeights; --weights: a real .safetensors instead), are timed
 * in float32 (and bfloat16), then written as an ONNX graph (onnx/*-onnx.ts) with the same weights
 * and run by ONNX Runtime's CPU provider (all graph optimisations, as many intra-op threads as we
 * use). The outputs are compared, so the table is about one network computed two ways.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { devices, synchronize } from "../devices";
import { writeJsonFile } from "../io/files";
import { openWeightsFile } from "../io/model-folder";
import { packageRoot } from "../native";
import { unetParamShapes, vaeParamShapes } from "../models/param-shapes";
import { UNet2DConditionModel, type UNet2DConditionConfigJson } from "../models/unet-2d-condition";
import { AutoencoderKL, type AutoencoderKLConfigJson } from "../models/autoencoder-kl";
import type { Module, StateDictSource } from "../nn/module";
import { Tensor } from "../tensor";
import { RandomWeights } from "./cpu-models";
import { countFlop } from "./flop-count";
import type { OnnxGraph } from "./onnx/graph";
import { buildUNetOnnx, timestepSinusoid } from "./onnx/unet-onnx";
import { buildVaeDecoderOnnx } from "./onnx/vae-onnx";
import { ORT_INSTALL_HINT, loadOrt, type Ort, type OrtTensor } from "./onnx/ort";

interface Args { model: "unet" | "vae"; config: string; size: number; batch: number; runs: number; bf16: boolean; json?: string; weights?: string }

function parseArgs(argv: string[]): Args {
  const a: Args = { model: "unet", config: path.join(packageRoot, "configs", "sd15"), size: 64, batch: 2, runs: 2, bf16: true };
  let batchGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const v = () => { if (i + 1 >= argv.length) throw new RangeError(`${argv[i]} needs a value`); return argv[++i]; };
    const pos = (s: string) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new RangeError(`${argv[i - 1]} must be a positive integer, got ${s}`); return n; };
    switch (argv[i]) {
      case "--model": { const m = v(); if (m !== "unet" && m !== "vae") throw new RangeError(`--model must be unet or vae, got ${m}`); a.model = m; break; }
      case "--config": a.config = v(); break;
      case "--size": a.size = pos(v()); break;
      case "--batch": a.batch = pos(v()); batchGiven = true; break;
      case "--runs": a.runs = pos(v()); break;
      case "--no-bf16": a.bf16 = false; break;
      case "--json": a.json = v(); break;
      case "--weights": a.weights = v(); break;
      default: throw new RangeError(`unknown argument ${argv[i]}`);
    }
  }
  if (a.model === "vae" && !batchGiven) a.batch = 1;  // a pipeline decodes one image at a time
  return a;
}

/** One network set up for the comparison. */
interface Subject {
  name: string;
  /** float32 forward -> output (a tensor the caller disposes). */
  forward(): Tensor;
  /** The same in bfloat16 (after toBf16). */
  forwardBf16(): Tensor;
  toBf16(): void;
  graph(): OnnxGraph;
  feeds(ort: Ort): Promise<Record<string, OrtTensor>>;
  dispose(): void;
}

function loadWeights(module: Module, file: string | undefined, random: () => StateDictSource): void {
  if (!file) return module.loadStateDict(random());
  const src = openWeightsFile(file);
  try { module.loadStateDict(src); } finally { src.close(); }
}

function unetSubject(a: Args): Subject {
  const config = JSON.parse(fs.readFileSync(path.join(a.config, "unet", "config.json"), "utf8")) as UNet2DConditionConfigJson;
  const unet = new UNet2DConditionModel(config);
  loadWeights(unet, a.weights, () => new RandomWeights(unetParamShapes(config)));
  const B = a.batch, h = a.size, tokens = 77, D = unet.config.crossAttentionDim[0], C0 = unet.config.blockOutChannels[0], t = 999;
  const sample = Tensor.randn([B, unet.config.inChannels, h, h], { seed: 12 }), ctx = Tensor.randn([B, tokens, D], { seed: 11 });
  let sampleBf16: Tensor | null = null;
  return {
    name: `${path.basename(a.config)} U-Net step, ${h * 8}x${h * 8}, batch ${B}`,
    forward: () => unet.forward(sample, t, ctx),
    forwardBf16: () => unet.forward(sampleBf16!, t, ctx),
    toBf16: () => { unet.to("cpu", "bfloat16"); sampleBf16 = sample.to("cpu", "bfloat16"); },
    graph: () => buildUNetOnnx(unet, { batch: B, height: h, width: h, tokens }),
    feeds: async (ort) => {
      const sin = await timestepSinusoid(t, C0, unet.config.flipSinToCos, unet.config.freqShift);
      return {
        sample: new ort.Tensor("float32", await sample.toFloat32Array(), [...sample.shape]),
        t_sin: new ort.Tensor("float32", Float32Array.from({ length: B * C0 }, (_, i) => sin[i % C0]), [B, C0]),
        encoder_hidden_states: new ort.Tensor("float32", await ctx.toFloat32Array(), [B, tokens, D]),
      };
    },
    dispose: () => { for (const x of [unet, sample, ctx, sampleBf16]) x?.dispose(); },
  };
}

function vaeSubject(a: Args): Subject {
  const config = JSON.parse(fs.readFileSync(path.join(a.config, "vae", "config.json"), "utf8")) as AutoencoderKLConfigJson;
  const vae = new AutoencoderKL(config);
  loadWeights(vae, a.weights, () => new RandomWeights(vaeParamShapes(config)));
  const B = a.batch, h = a.size, f = vae.config.scaleFactor;
  const z = Tensor.randn([B, vae.config.latentChannels, h, h], { seed: 13 });
  let zBf16: Tensor | null = null;
  return {
    name: `${path.basename(a.config)} VAE decode, ${h}x${h} -> ${h * f}x${h * f}, batch ${B}`,
    forward: () => vae.decode(z),
    forwardBf16: () => vae.decode(zBf16!),
    toBf16: () => { vae.to("cpu", "bfloat16"); zBf16 = z.to("cpu", "bfloat16"); },
    graph: () => buildVaeDecoderOnnx(vae, { batch: B, height: h, width: h }),
    feeds: async (ort) => ({ latents: new ort.Tensor("float32", await z.toFloat32Array(), [...z.shape]) }),
    dispose: () => { for (const x of [vae, z, zBf16]) x?.dispose(); },
  };
}

async function timeRuns(runs: number, fn: () => Promise<void>, warmup = fn): Promise<number[]> {
  await warmup();
  const ms: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return ms;
}

const best = (xs: number[]) => Math.min(...xs);
const seconds = (xs: number[]) => xs.map((m) => (m / 1000).toFixed(2)).join(", ") + " s";

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const ort = loadOrt();
  if (!ort) {
    process.stderr.write(`ort-compare: ${ORT_INSTALL_HINT}\n`);
    process.exitCode = 2;
    return;
  }
  const cpu = devices().find((d) => d.type === "cpu");
  const threads = cpu && cpu.type === "cpu" ? cpu.threads : os.cpus().length;
  const log = (s: string) => process.stderr.write(s + "\n");
  const subject = args.model === "unet" ? unetSubject(args) : vaeSubject(args);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ort-"));
  try {
    log(`${subject.name}: ${threads} threads, ${os.cpus()[0]?.model ?? "cpu"}`);
    let ours: Float32Array = new Float32Array(0), flop = 0;
    const run = async (y: Tensor) => { ours = await y.toFloat32Array(); y.dispose(); };
    // the warm-up run also counts the flop
    const oursMs = await timeRuns(args.runs, () => run(subject.forward()), () => { const c = countFlop(() => subject.forward()); flop = c.flop; return run(c.result); });
    log(`diffusekit float32: ${seconds(oursMs)}`);
    const t0 = performance.now();
    const file = await subject.graph().write(dir, args.model);
    log(`wrote ${file} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const feeds = await subject.feeds(ort);
    // bfloat16 after the export: the ONNX file holds the float32 weights the float32 output came from
    let bf16Ms: number[] | null = null;
    if (args.bf16) {
      subject.toBf16();
      bf16Ms = await timeRuns(args.runs, async () => { const y = subject.forwardBf16(); await y.toFloat32Array(); y.dispose(); });
      log(`diffusekit bfloat16: ${seconds(bf16Ms)}`);
    }
    subject.dispose();
    await synchronize("cpu");

    const t1 = performance.now();
    const session = await ort.InferenceSession.create(file, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all", executionMode: "sequential" });
    log(`ONNX Runtime ${ort.env.versions.common}: session created in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
    let theirs: Float32Array = new Float32Array(0);
    const ortMs = await timeRuns(args.runs, async () => { theirs = (await session.run(feeds))[session.outputNames[0]].data as Float32Array; });
    log(`ONNX Runtime float32: ${seconds(ortMs)}`);
    await session.release();

    let maxDiff = ours.length === theirs.length ? 0 : Infinity, maxRef = 0;
    for (let i = 0; i < ours.length && i < theirs.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(ours[i] - theirs[i]));
      maxRef = Math.max(maxRef, Math.abs(theirs[i]));
    }
    const rel = maxDiff / Math.max(1, maxRef);
    const rows = [
      { engine: `ONNX Runtime ${ort.env.versions.common} (CPU EP, float32)`, s: best(ortMs) / 1000 },
      { engine: "diffusekit float32", s: best(oursMs) / 1000 },
      ...(bf16Ms ? [{ engine: "diffusekit bfloat16", s: best(bf16Ms) / 1000 }] : []),
    ];
    const ortS = rows[0].s;
    process.stdout.write(`\n${subject.name} (${(flop / 1e12).toFixed(2)} TFLOP), best of ${args.runs}, ${threads} threads\n`);
    process.stdout.write(`| engine | s | GFLOP/s | ORT time / ours |\n| --- | --- | --- | --- |\n`);
    for (const r of rows) process.stdout.write(`| ${r.engine} | ${r.s.toFixed(2)} | ${(flop / r.s / 1e9).toFixed(0)} | ${(ortS / r.s).toFixed(2)}x |\n`);
    process.stdout.write(`outputs: max |diffusekit - ORT| / max(1, max |ORT|) = ${rel.toExponential(2)}\n`);
    if (args.json) {
      writeJsonFile(args.json, { name: subject.name, threads, flop, rows, ortMs, oursMs, bf16Ms, relError: rel, maxAbsOutput: maxRef, ort: ort.env.versions.common });
    }
    if (!(rel < 1e-3)) {
      process.stderr.write(`ort-compare: the outputs differ (${rel.toExponential(2)}): the timing compares different networks\n`);
      process.exitCode = 1;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`ort-compare: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  });
}
