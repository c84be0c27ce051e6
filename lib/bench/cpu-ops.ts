// The op families: every case runs on diffusekit here, and the same list goes to the PyTorch
// script (scripts/torch-cpu-bench.py) when it can run.
import { native } from "../native";
import type { Tensor } from "../tensor";
import { rowFor, timeCpu, timingPolicy, type BenchContext, type OpCase } from "./cpu-common";
import { attentionCases, prepareAttention } from "./cpu-attention";
import { convCases, prepareConv } from "./cpu-conv";
import { gemmCases, prepareGemm } from "./cpu-gemm";
import { normCases, prepareNorm } from "./cpu-norm";
import type { CpuBenchRow } from "./table";

/** A case made runnable: its inputs (disposed after) and the call to time. */
export interface Prepared { inputs: Tensor[]; fn: () => Tensor }

export const opGroups = ["gemm", "conv", "attention", "norm"] as const;
export type OpGroup = (typeof opGroups)[number];

export function opCases(groups: ReadonlySet<string>, quick: boolean): OpCase[] {
  const out: OpCase[] = [];
  if (groups.has("gemm")) out.push(...gemmCases(quick));
  if (groups.has("conv")) out.push(...convCases(quick));
  if (groups.has("attention")) out.push(...attentionCases(quick));
  if (groups.has("norm")) out.push(...normCases(quick));
  return out;
}

function prepare(c: OpCase): Prepared {
  switch (c.group) {
    case "gemm": return prepareGemm(c);
    case "conv": return prepareConv(c);
    case "attention": return prepareAttention(c);
    case "norm": return prepareNorm(c);
  }
}

/** Conv rows run through Winograd do fewer multiplies than the direct flop count says. */
function caseNote(c: OpCase): string | undefined {
  if (c.group !== "conv") return undefined;
  const pad = (c.R - 1) / 2;
  const bf16 = c.dtype === "bfloat16";
  const algo = native().conv2dAlgo([c.N, c.H, c.W, c.C], [c.K, c.R, c.R, c.C], [1, 1], [pad, pad], [1, 1], c.dtype ?? "float32");
  if (algo !== "winograd") return undefined;
  // bf16 without AVX512_BF16 runs the fp32 conv (F(4,3)); with it, F(2,3) (accuracy, see conv2d_winograd_bf16.cc)
  const tile = bf16 && native().devices().some((d) => d.type === "cpu" && d.isa?.includes("bf16")) ? "F(2,3)" : "F(4,3)";
  return `winograd ${tile}: effective GFLOP/s (direct-conv flop), >100% of peak possible`;
}

export async function runOpCases(cases: readonly OpCase[], ctx: BenchContext, onRow: (row: CpuBenchRow) => void): Promise<CpuBenchRow[]> {
  const rows: CpuBenchRow[] = [];
  const policy = timingPolicy(ctx.quick);
  for (const c of cases) {
    const p = prepare(c);
    try {
      const { ms, runs, cpuShare } = await timeCpu(p.fn, policy, ctx.peak.threads);
      const row = rowFor(c, ms, runs, cpuShare, ctx.peak);
      const note = caseNote(c);
      if (note) row.note = row.note ? `${row.note}; ${note}` : note;
      rows.push(row);
      onRow(row);
    } finally {
      for (const t of p.inputs) t.dispose();
    }
  }
  return rows;
}
