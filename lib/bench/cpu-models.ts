// Whole-model rows: the SD1.5 U-Net forward (batch 2) and the VAE decode, in fp32 and then in
// bf16 (weights and activations; the note gives the speed-up over the fp32 row), with random
// weights built from the reference configs (no checkpoint needed). Reports seconds, the work the
// GEMM-class ops did (counted while the warm-up runs), peak RSS and the native allocator's peak.
import * as fs from "fs";
import * as path from "path";
import { emptyCache, memoryStats, resetPeakMemory, synchronize } from "../devices";
import { AutoencoderKL, type AutoencoderKLConfigJson } from "../models/autoencoder-kl";
import { unetParamShapes, vaeParamShapes, type ParamShapes } from "../models/param-shapes";
import { UNet2DConditionModel, type UNet2DConditionConfigJson } from "../models/unet-2d-condition";
import { native, packageRoot } from "../native";
import type { StateDictSource } from "../nn/module";
import * as ops from "../ops";
import { Tensor, type DType, type DeviceName } from "../tensor";
import { median, withPeak, type BenchContext } from "./cpu-common";
import type { CpuBenchRow } from "./table";
import { countFlop } from "./flop-count";

export const modelGroups = ["unet", "vae"] as const;

/** <reference>/configs (DIFFUSEKIT_REFERENCE_DIR, else ../shared/reference beside the package). */
export function configDir(): string {
  const ref = process.env.DIFFUSEKIT_REFERENCE_DIR ?? path.join(packageRoot, "..", "shared", "reference");
  return path.join(ref, "configs");
}

/**
 * Weights made one at a time as load() asks for them: N(0, 0.02^2), norm scales 1. Keeps the
 * peak at one model's worth of parameters.
 */
export class RandomWeights implements StateDictSource {
  private readonly index: Map<string, number>;
  constructor(private readonly shapes: ParamShapes) {
    this.index = new Map([...shapes.keys()].map((k, i) => [k, i]));
  }
  keys(): string[] { return [...this.shapes.keys()]; }
  shape(key: string): readonly number[] { return this.shapes.get(key)!; }
  load(key: string, opts: { dtype: DType; device: DeviceName }): Tensor {
    const shape = this.shapes.get(key)!;
    if (/norm[^.]*\.weight$/.test(key)) return Tensor.ones(shape, opts);
    const r = Tensor.randn(shape, { seed: 1000 + this.index.get(key)!, ...opts });
    try { return ops.mul(r, 0.02); } finally { r.dispose(); }
  }
}

const GB = 1e9;

interface ModelRun { name: string; warmups: number; runs: number; forward: () => Tensor }

async function timeModel(run: ModelRun, ctx: BenchContext, weightBytes: number): Promise<CpuBenchRow> {
  emptyCache("cpu");
  resetPeakMemory("cpu");
  let flop = 0;
  for (let i = 0; i < run.warmups; i++) {
    const t0 = process.hrtime.bigint();
    const counted = countFlop(run.forward);
    flop = counted.flop;
    await synchronize("cpu");
    counted.result.dispose();
    ctx.log(`  ${run.name}: warm-up ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(1)} s`);
  }
  const times: number[] = [];
  let finite = true, cpuMs = 0;
  if (ctx.profile) native().opProfile(true);
  for (let i = 0; i < run.runs; i++) {
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const counted = countFlop(run.forward);
    await synchronize("cpu");
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const cpu = process.cpuUsage(cpu0);
    cpuMs += (cpu.user + cpu.system) / 1e3;
    flop = counted.flop;
    const values = (await counted.result.toArray()) as Float32Array;
    finite &&= values.every(Number.isFinite);
    counted.result.dispose();
  }
  if (ctx.profile) logProfile(run.name, native().opProfile(false), times, ctx);
  const ms = median(times);
  const gflops = flop / ms / 1e6;
  const stats = memoryStats("cpu");
  const rssBytes = process.resourceUsage().maxRSS * 1024;
  const note = `${(flop / 1e12).toFixed(2)} TFLOP; peak RSS ${(rssBytes / GB).toFixed(2)} GB; allocator peak ${(stats.peakBytes / GB).toFixed(2)} GB` +
    ` (weights ${(weightBytes / GB).toFixed(2)})` + (finite ? "" : "; OUTPUT NOT FINITE");
  const cpuShare = cpuMs / (times.reduce((a, b) => a + b, 0) * ctx.peak.threads);
  return withPeak({ group: "model", name: run.name, ms, runs: times.length, gflops, cpuShare, note }, ctx.peak);
}

/** The queue's time per op over the timed runs, per run, largest first. */
export function logProfile(name: string, entries: { op: string; count: number; ms: number }[], times: number[], ctx: BenchContext): void {
  const runs = times.length, wall = times.reduce((a, b) => a + b, 0) / runs;
  ctx.log(`  ${name}: time per op (per run; wall ${wall.toFixed(0)} ms)`);
  for (const e of entries.filter((x) => x.ms / runs >= 0.005 * wall))
    ctx.log(`    ${e.op.padEnd(20)} ${(e.ms / runs).toFixed(1).padStart(9)} ms ${(100 * e.ms / runs / wall).toFixed(1).padStart(5)}%  ${Math.round(e.count / runs)} calls`);
}

/** timeModel, or a row that says why it failed (the other rows still run). */
async function tryModel(run: ModelRun, ctx: BenchContext, weightBytes: number): Promise<CpuBenchRow> {
  try {
    return await timeModel(run, ctx, weightBytes);
  } catch (e) {
    await synchronize("cpu").catch(() => undefined);
    return { group: "model", name: run.name, ms: NaN, runs: 0, note: `FAILED: ${(e as Error).message.split("\n")[0]}` };
  }
}

/** Marks a bf16 row (% of the bf16 peak) and adds "N.NNx" (fp32 time / its time) to its note. */
function withRatio(row: CpuBenchRow, fp32Ms: number | undefined): CpuBenchRow {
  row.bf16 = true;
  if (fp32Ms !== undefined && Number.isFinite(fp32Ms) && Number.isFinite(row.ms))
    row.note = `${(fp32Ms / row.ms).toFixed(2)}x the fp32 row; ${row.note ?? ""}`;
  return row;
}

function readConfig<T>(file: string): T {
  return JSON.parse(fs.readFileSync(file, "utf8")) as T;
}

/** Runs the model rows in `groups` ("unet", "vae"); skips with a notice when the configs are absent. */
export async function runModelCases(groups: ReadonlySet<string>, ctx: BenchContext, onRow: (row: CpuBenchRow) => void): Promise<CpuBenchRow[]> {
  const dir = configDir();
  const rows: CpuBenchRow[] = [];
  const record = (row: CpuBenchRow) => { rows.push(row); onRow(row); };

  if (groups.has("unet")) {
    const file = path.join(dir, "sd15", "unet", "config.json");
    if (!fs.existsSync(file)) ctx.log(`model rows: skipped the U-Net (no ${file}; set DIFFUSEKIT_REFERENCE_DIR)`);
    else {
      const config = readConfig<UNet2DConditionConfigJson>(file);
      const unet = new UNet2DConditionModel(config);
      unet.loadStateDict(new RandomWeights(unetParamShapes(config)));
      await synchronize("cpu");
      const weightBytes = memoryStats("cpu").bytesInUse;
      const ctxStates = Tensor.randn([2, 77, 768], { seed: 11 });
      // latent side 32 (256x256 image) then 64 (512x512): ~0.4 and ~1.6 TFLOP a step at batch 2
      const sizes = ctx.quick ? [[32, 1, 1]] : [[32, 1, 3], [64, 1, 1]];
      const fp32Ms = new Map<number, number>();
      try {
        for (const [h, warmups, runs] of sizes) {
          const sample = Tensor.randn([2, 4, h, h], { seed: 12 });
          try {
            const row = await tryModel({ name: `unet sd15 ${h * 8}x${h * 8} b2 step`, warmups, runs, forward: () => unet.forward(sample, 999, ctxStates) }, ctx, weightBytes);
            fp32Ms.set(h, row.ms);
            record(row);
          } finally { sample.dispose(); }
        }
        // The same steps with bf16 weights and activations (the sample and context cast inside forward).
        unet.to("cpu", "bfloat16");
        await synchronize("cpu");
        const bf16Bytes = memoryStats("cpu").bytesInUse;
        for (const [h, warmups, runs] of sizes) {
          const sample = Tensor.randn([2, 4, h, h], { seed: 12 });
          try {
            const sb = sample.to("cpu", "bfloat16");
            try {
              const row = await tryModel({ name: `unet sd15 ${h * 8}x${h * 8} b2 step bf16`, warmups, runs, forward: () => unet.forward(sb, 999, ctxStates) }, ctx, bf16Bytes);
              record(withRatio(row, fp32Ms.get(h)));
            } finally { sb.dispose(); }
          } finally { sample.dispose(); }
        }
      } finally {
        ctxStates.dispose();
        unet.dispose();
      }
    }
  }

  if (groups.has("vae")) {
    const file = path.join(dir, "sd15", "vae", "config.json");
    if (!fs.existsSync(file)) ctx.log(`model rows: skipped the VAE (no ${file}; set DIFFUSEKIT_REFERENCE_DIR)`);
    else {
      const config = readConfig<AutoencoderKLConfigJson>(file);
      const vae = new AutoencoderKL(config);
      vae.loadStateDict(new RandomWeights(vaeParamShapes(config)));
      await synchronize("cpu");
      const weightBytes = memoryStats("cpu").bytesInUse;
      const h = ctx.quick ? 32 : 64;
      const z = Tensor.randn([1, 4, h, h], { seed: 13 });
      try {
        const fp32 = await tryModel({ name: `vae sd15 decode ${h}x${h} -> ${h * 8}x${h * 8}`, warmups: 1, runs: 1, forward: () => vae.decode(z) }, ctx, weightBytes);
        record(fp32);
        vae.to("cpu", "bfloat16");
        const zb = z.to("cpu", "bfloat16");
        try {
          await synchronize("cpu");
          const row = await tryModel({ name: `vae sd15 decode ${h}x${h} -> ${h * 8}x${h * 8} bf16`, warmups: 1, runs: 1, forward: () => vae.decode(zb) }, ctx, memoryStats("cpu").bytesInUse);
          // the VAE keeps bf16 convs direct (no Winograd), so CPU pipelines decode in float32 instead
          row.note = `direct convs (pipelines decode in fp32 on the CPU); ${row.note ?? ""}`;
          record(withRatio(row, fp32.ms));
        } finally { zb.dispose(); }
      } finally {
        z.dispose();
        vae.dispose();
      }
    }
  }
  return rows;
}
