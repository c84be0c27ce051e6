#!/usr/bin/env node
/**
 * The SD U-Net step in diffusekit and in ONNX Runtime on this machine, same weights, same inputs:
 *
 *   npm i --no-save onnxruntime-node        (once: ORT is not a dependency of the package;
 *                                           or install it elsewhere and set DIFFUSEKIT_ORT_DIR)
 *   node dist/bench/ort-unet.js [--config configs/sd15] [--size 64] [--batch 2] [--runs 2] [--no-bf16] [--json FILE]
 *                               [--weights unet.safetensors]   (real weights instead of random ones)
 *
 * Random SD weights (the bench's RandomWeights) go into our U-Net, which is timed in float32 (and
 * bfloat16), then written as an ONNX graph (onnx/unet-onnx.ts) with the same weights and run by
 * ONNX Runtime's CPU provider (all graph optimisations, as many intra-op threads as we use). The
 * outputs are compared, so the table is about one network computed two ways.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { synchronize } from "../devices";
import { devices } from "../devices";
import { unetParamShapes } from "../models/param-shapes";
import { UNet2DConditionModel, type UNet2DConditionConfigJson } from "../models/unet-2d-condition";
import { Tensor } from "../tensor";
import { RandomWeights } from "./cpu-models";
import { openWeightsFile } from "../io/model-folder";
import { countFlop } from "./flop-count";
import { buildUNetOnnx, timestepSinusoid } from "./onnx/unet-onnx";
import { ORT_INSTALL_HINT, loadOrt } from "./onnx/ort";

interface Args { config: string; size: number; batch: number; runs: number; bf16: boolean; json?: string; weights?: string }

function parseArgs(argv: string[]): Args {
  const a: Args = { config: path.join(__dirname, "..", "..", "configs", "sd15"), size: 64, batch: 2, runs: 2, bf16: true };
  for (let i = 0; i < argv.length; i++) {
    const v = () => { if (i + 1 >= argv.length) throw new RangeError(`${argv[i]} needs a value`); return argv[++i]; };
    const pos = (s: string) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new RangeError(`${argv[i - 1]} must be a positive integer, got ${s}`); return n; };
    switch (argv[i]) {
      case "--config": a.config = v(); break;
      case "--size": a.size = pos(v()); break;
      case "--batch": a.batch = pos(v()); break;
      case "--runs": a.runs = pos(v()); break;
      case "--no-bf16": a.bf16 = false; break;
      case "--json": a.json = v(); break;
      case "--weights": a.weights = v(); break;
      default: throw new RangeError(`unknown argument ${argv[i]}`);
    }
  }
  return a;
}

async function timeRuns(runs: number, fn: () => Promise<void>): Promise<number[]> {
  await fn();  // warm-up
  const ms: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return ms;
}

const best = (xs: number[]) => Math.min(...xs);

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const ort = loadOrt();
  if (!ort) {
    process.stderr.write(`ort-unet: ${ORT_INSTALL_HINT}\n`);
    process.exitCode = 2;
    return;
  }
  const cpu = devices().find((d) => d.type === "cpu");
  const threads = cpu && cpu.type === "cpu" ? cpu.threads : os.cpus().length;
  const config = JSON.parse(fs.readFileSync(path.join(args.config, "unet", "config.json"), "utf8")) as UNet2DConditionConfigJson;
  const unet = new UNet2DConditionModel(config);
  if (args.weights) {
    const src = openWeightsFile(args.weights);
    try { unet.loadStateDict(src); } finally { src.close(); }
  } else {
    unet.loadStateDict(new RandomWeights(unetParamShapes(config)));
  }
  const B = args.batch, h = args.size, tokens = 77, ctxDim = unet.config.crossAttentionDim[0], t = 999;
  const sample = Tensor.randn([B, unet.config.inChannels, h, h], { seed: 12 });
  const ctx = Tensor.randn([B, tokens, ctxDim], { seed: 11 });
  const name = `${path.basename(args.config)} U-Net step, ${h * 8}x${h * 8}, batch ${B}`;
  const log = (s: string) => process.stderr.write(s + "\n");
  log(`${name}: ${threads} threads, ${os.cpus()[0]?.model ?? "cpu"}`);

  let ours: Float32Array = new Float32Array(0);
  const counted = countFlop(() => unet.forward(sample, t, ctx));
  const flop = counted.flop;
  counted.result.dispose();
  const oursMs = await timeRuns(args.runs, async () => {
    const y = unet.forward(sample, t, ctx);
    ours = await y.toFloat32Array();
    y.dispose();
  });
  log(`diffusekit float32: ${oursMs.map((m) => (m / 1000).toFixed(2)).join(", ")} s`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dk-ort-"));
  try {
    const t0 = performance.now();
    const file = await buildUNetOnnx(unet, { batch: B, height: h, width: h, tokens }).write(dir, "unet");
    log(`wrote ${file} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    // bfloat16 after the export: the ONNX file holds the float32 weights the float32 output came from
    let bf16Ms: number[] | null = null;
    if (args.bf16) {
      unet.to("cpu", "bfloat16");
      const sb = sample.to("cpu", "bfloat16");
      bf16Ms = await timeRuns(args.runs, async () => { const y = unet.forward(sb, t, ctx); await y.toFloat32Array(); y.dispose(); });
      sb.dispose();
      log(`diffusekit bfloat16: ${bf16Ms.map((m) => (m / 1000).toFixed(2)).join(", ")} s`);
    }
    const feeds = {
      sample: new ort.Tensor("float32", await sample.toFloat32Array(), [...sample.shape]),
      t_sin: new ort.Tensor("float32", (() => {
        const one = timestepSinusoid(t, unet.config.blockOutChannels[0], unet.config.flipSinToCos, unet.config.freqShift);
        const all = new Float32Array(B * one.length);
        for (let b = 0; b < B; b++) all.set(one, b * one.length);
        return all;
      })(), [B, unet.config.blockOutChannels[0]]),
      encoder_hidden_states: new ort.Tensor("float32", await ctx.toFloat32Array(), [B, tokens, ctxDim]),
    };
    unet.dispose();
    sample.dispose();
    ctx.dispose();
    await synchronize("cpu");
    const t1 = performance.now();
    const session = await ort.InferenceSession.create(file, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all", executionMode: "sequential" });
    log(`ONNX Runtime ${ort.env.versions.common}: session created in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
    let theirs: Float32Array = new Float32Array(0);
    const ortMs = await timeRuns(args.runs, async () => {
      const r = await session.run(feeds);
      theirs = r[session.outputNames[0]].data as Float32Array;
    });
    log(`ONNX Runtime float32: ${ortMs.map((m) => (m / 1000).toFixed(2)).join(", ")} s`);
    await session.release();

    let maxDiff = 0, maxRef = 0;
    for (let i = 0; i < ours.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(ours[i] - theirs[i]));
      maxRef = Math.max(maxRef, Math.abs(theirs[i]));
    }
    if (ours.length !== theirs.length) maxDiff = Infinity;
    const rel = maxDiff / Math.max(1, maxRef);
    const rows = [
      { engine: `ONNX Runtime ${ort.env.versions.common} (CPU EP, float32)`, s: best(ortMs) / 1000 },
      { engine: "diffusekit float32", s: best(oursMs) / 1000 },
      ...(bf16Ms ? [{ engine: "diffusekit bfloat16", s: best(bf16Ms) / 1000 }] : []),
    ];
    const ortS = rows[0].s;
    process.stdout.write(`\n${name} (${(flop / 1e12).toFixed(2)} TFLOP), best of ${args.runs}, ${threads} threads\n`);
    process.stdout.write(`| engine | s / step | GFLOP/s | ORT time / ours |\n| --- | --- | --- | --- |\n`);
    for (const r of rows) process.stdout.write(`| ${r.engine} | ${r.s.toFixed(2)} | ${(flop / r.s / 1e9).toFixed(0)} | ${(ortS / r.s).toFixed(2)}x |\n`);
    process.stdout.write(`outputs: max |diffusekit - ORT| / max(1, max |ORT|) = ${rel.toExponential(2)}\n`);
    if (args.json) fs.writeFileSync(args.json, JSON.stringify({ name, threads, flop, rows, ortMs, oursMs, bf16Ms, relError: rel, maxAbsOutput: maxRef, ort: ort.env.versions.common }, null, 2) + "\n");
    if (!(rel < 1e-3)) {
      process.stderr.write(`ort-unet: the outputs differ (${rel.toExponential(2)}): the timing compares different networks\n`);
      process.exitCode = 1;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`ort-unet: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  });
}
