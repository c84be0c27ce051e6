// Training rows: train() fine-tuning the built-in model (its UNet and text encoder, batch 8 at
// 64x64, AdamW + EMA, as scripts/train-builtin.js --init does) on the shapes set, in float32 and
// with mixedPrecision "bf16". The time per optimiser step is taken over the steps after a
// warm-up, from the trainer's own progress callback; the flop per step (GEMM-class work of the
// forward and backward: flop-count.ts) is counted over the same steps.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { BUILTIN_MODEL_DIR } from "../generate";
import { train } from "../train/trainer";
import type { MixedPrecision } from "../train/loop";
import { withPeak, type BenchContext } from "./cpu-common";
import { startFlopCount } from "./flop-count";
import { logProfile } from "./cpu-models";
import { native } from "../native";
import type { CpuBenchRow } from "./table";

export const trainGroups = ["train"] as const;

const BATCH = 8;

type Profile = { op: string; count: number; ms: number }[];

async function stepTime(mixedPrecision: MixedPrecision, steps: number, warmup: number, threads: number, profile: boolean): Promise<{ ms: number; cpuShare: number; runs: number; flop: number; profile: Profile }> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "dk-bench-train-"));
  const marks: { step: number; t: number; cpu: number }[] = [];
  const cpuSec = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
  let count: ReturnType<typeof startFlopCount> | null = null;
  let flop = 0, prof: Profile = [];
  try {
    await train({
      data: "shapes:64", out, init: BUILTIN_MODEL_DIR, textEncoder: "train", resolution: 64, batchSize: BATCH, steps, ema: 0.999,
      mixedPrecision, seed: 0, handleSigint: false, onWarn: () => undefined,
      onLog: (i) => {
        marks.push({ step: i.step, t: performance.now(), cpu: cpuSec() });
        // step k is reported while step k + 1 runs, after its forward and backward were
        // dispatched: the GEMM-class ops between these two callbacks are those of steps
        // warmup + 2 .. steps, one fewer than the steps the wall time covers
        if (i.step === warmup) {
          count = startFlopCount();
          if (profile) native().opProfile(true);
        }
        if (i.step === steps && count) {
          flop = count.stop();
          count = null;
          if (profile) prof = native().opProfile(false);
        }
      },
    });
  } finally {
    (count as ReturnType<typeof startFlopCount> | null)?.stop();
    fs.rmSync(out, { recursive: true, force: true });
  }
  const a = marks.find((m) => m.step === warmup)!, b = marks[marks.length - 1];
  const n = b.step - a.step, wall = (b.t - a.t) / 1000;
  return { ms: (1000 * wall) / n, cpuShare: (b.cpu - a.cpu) / (wall * threads), runs: n, flop: flop / (n - 1), profile: prof };
}

/** One row per precision; the bf16 row's note gives its speed-up over float32. */
export async function runTrainCases(ctx: BenchContext, onRow: (r: CpuBenchRow) => void): Promise<CpuBenchRow[]> {
  const steps = ctx.quick ? 8 : 30, warmup = 3;
  const rows: CpuBenchRow[] = [];
  let f32ms = 0;
  for (const mp of ["no", "bf16"] as const) {
    const r = await stepTime(mp, steps, warmup, ctx.peak.threads, !!ctx.profile);
    if (mp === "no") f32ms = r.ms;
    const ips = (BATCH * 1000) / r.ms;
    // the bf16 row's % peak is of the fp32 peak too: its backward kernels run in float32
    const row: CpuBenchRow = withPeak({
      group: "train", name: `builtin 64px b${BATCH} ${mp === "no" ? "fp32" : "bf16-mixed"}`, ms: r.ms, runs: r.runs, cpuShare: r.cpuShare,
      gflops: r.flop / r.ms / 1e6,
      note: `${ips.toFixed(1)} images/s; ${(r.flop / 1e9).toFixed(2)} GFLOP per step (forward + backward)` + (mp === "bf16" ? `; ${(f32ms / r.ms).toFixed(2)}x fp32` : ""),
    }, ctx.peak);
    rows.push(row);
    onRow(row);
    if (ctx.profile) logProfile(row.name, r.profile, Array(r.runs).fill(r.ms), ctx);
  }
  return rows;
}
