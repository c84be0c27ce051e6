// Shared pieces of the CPU benchmark: the op cases (plain data, also handed to the PyTorch
// script so both sides run the same shapes), the timing policy and the row builder.
import { synchronize } from "../devices";
import type { CpuPeak } from "../native";
import { Tensor } from "../tensor";
import type { CpuBenchRow } from "./table";

/** A [M,K] x [K,N] matmul, or activations [M,K] x Linear weight [N,K]. */
export interface GemmCase { group: "gemm"; name: string; kind: "matmul" | "linear"; M: number; K: number; N: number; dtype?: BenchDType }
/** x [N,H,W,C] (NHWC) * weight [K,R,R,C] (OHWI), stride 1, "same" padding. */
export interface ConvCase { group: "conv"; name: string; N: number; H: number; W: number; C: number; K: number; R: number; dtype?: BenchDType }
/** Operand dtype of a GEMM / conv case (float32 when absent); bfloat16 rows are rated against the vdpbf16ps peak. */
export type BenchDType = "float32" | "bfloat16";
/** q [B,Nq,heads*D], k/v [B,Nk,heads*D]. */
export interface AttentionCase { group: "attention"; name: string; B: number; heads: number; Nq: number; Nk: number; D: number; dtype?: BenchDType }
/** groupNorm(+SiLU) over x [N,H,W,C] channels-last, or layerNorm over the last dim of [B,T,C]. */
export interface NormCase { group: "norm"; name: string; kind: "groupnorm" | "layernorm"; shape: number[]; groups?: number; silu?: boolean }
export type OpCase = GemmCase | ConvCase | AttentionCase | NormCase;

export interface BenchContext {
  peak: CpuPeak;
  quick: boolean;
  /** Model rows log the time per native op of their timed runs. */
  profile?: boolean;
  log: (line: string) => void;
}

/** Floating-point work of a case (multiply-add = 2), or 0 for memory-bound ones. */
export function caseFlop(c: OpCase): number {
  switch (c.group) {
    case "gemm": return 2 * c.M * c.N * c.K;
    case "conv": return 2 * c.N * c.H * c.W * c.K * c.C * c.R * c.R;
    case "attention": return 4 * c.B * c.heads * c.Nq * c.Nk * c.D;  // q k^T and p v
    case "norm": return 0;
  }
}

/** Minimum bytes a memory-bound case moves: its input read once and its output written once. */
export function caseBytes(c: OpCase): number {
  return c.group === "norm" ? 2 * 4 * c.shape.reduce((a, b) => a * b, 1) : 0;
}

/** How many timed runs, and for how long (the PyTorch script applies the same rule). */
export interface TimingPolicy { warmup: number; minRuns: number; maxRuns: number; budgetMs: number }
export const timingPolicy = (quick: boolean): TimingPolicy =>
  quick ? { warmup: 1, minRuns: 3, maxRuns: 10, budgetMs: 250 } : { warmup: 1, minRuns: 5, maxRuns: 25, budgetMs: 1000 };

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Median wall time (ms) of `fn` on the CPU queue: each run is enqueued, then awaited, so the time
 * is the kernel's plus one queue round trip (tens of microseconds).
 */
export async function timeCpu(fn: () => Tensor, policy: TimingPolicy, threads: number): Promise<{ ms: number; runs: number; cpuShare: number }> {
  await synchronize("cpu");
  for (let i = 0; i < policy.warmup; i++) {
    const t = fn();
    await synchronize("cpu");
    t.dispose();
  }
  const times: number[] = [];
  let spent = 0;
  const cpu0 = process.cpuUsage();
  while (times.length < policy.maxRuns && (times.length < policy.minRuns || spent < policy.budgetMs)) {
    const t0 = process.hrtime.bigint();
    const t = fn();
    await synchronize("cpu");
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    t.dispose();
    times.push(ms);
    spent += ms;
  }
  const cpu = process.cpuUsage(cpu0);
  return { ms: median(times), runs: times.length, cpuShare: (cpu.user + cpu.system) / 1e3 / (spent * threads) };
}

export function rowFor(c: OpCase, ms: number, runs: number, cpuShare: number, peak: CpuPeak): CpuBenchRow {
  const flop = caseFlop(c);
  const row: CpuBenchRow = { group: c.group, name: c.name, ms, runs, cpuShare };
  if ((c.group === "gemm" || c.group === "conv" || c.group === "attention") && c.dtype === "bfloat16") row.bf16 = true;
  if (flop > 0) row.gflops = flop / ms / 1e6;
  else row.gbps = caseBytes(c) / ms / 1e6;
  return withPeak(row, peak);
}

/**
 * Sets pctPeak from the row's rate: GFLOP/s against the fp32 FMA peak with the cores to itself
 * (fp32GflopsCpu; bf16 rows: the vdpbf16ps peak where measured), GB/s against the scale bandwidth.
 */
export function withPeak(row: CpuBenchRow, peak: CpuPeak): CpuBenchRow {
  if (row.gflops !== undefined) row.pctPeak = (100 * row.gflops) / ((row.bf16 ? peak.bf16GflopsCpu : null) ?? peak.fp32GflopsCpu);
  else if (row.gbps !== undefined) row.pctPeak = (100 * row.gbps) / peak.scaleGBs;
  return row;
}

export const randn = (shape: number[], seed: number, dtype: BenchDType = "float32"): Tensor =>
  Tensor.randn(shape, { seed, dtype });
