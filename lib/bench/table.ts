// The benchmark's rows and the plain-text table `npm run bench` prints.

export interface CpuBenchRow {
  group: string;
  name: string;
  /** Median wall time of one call (ms). */
  ms: number;
  /** Arithmetic rate (compute-bound ops). */
  gflops?: number;
  /** Memory rate (norms): bytes read once + written once over the time. */
  gbps?: number;
  /** bfloat16 operands: pctPeak is of the vdpbf16ps peak. */
  bf16?: boolean;
  /** gflops vs the measured fp32 FMA peak (bf16 rows: bf16 peak), or gbps vs the measured streaming bandwidth. */
  pctPeak?: number;
  /** Runs the median was taken over (after the warm-up). */
  runs: number;
  /**
   * Process CPU time over (wall time x pool threads) while timed: well under 1 means other
   * processes held the cores (or the op left threads idle).
   */
  cpuShare?: number;
  /** The same case in PyTorch on the same threads, when it ran, and its cpuShare. */
  torchMs?: number;
  torchCpuShare?: number;
  /** Free-form extras (model rows: memory). */
  note?: string;
}

const fmt = (v: number | undefined, digits: number): string => (v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(digits));

function msText(ms: number): string {
  if (!Number.isFinite(ms)) return "-";
  return ms >= 10_000 ? `${(ms / 1000).toFixed(2)} s` : ms >= 100 ? ms.toFixed(0) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3);
}

/**
 * Rows as a fixed-width table. "cpu" is cpuShare; "%pk/cpu" = % peak / cpuShare, the efficiency
 * while it held the cores (GFLOP/s rows); "torch/ours" > 1 means diffusekit is faster.
 */
export function formatTable(rows: readonly CpuBenchRow[]): string {
  const header = ["group", "case", "ms", "GFLOP/s", "% peak", "cpu", "%pk/cpu", "torch ms", "torch/ours", "note"];
  const body = rows.map((r) => [
    r.group,
    r.name,
    msText(r.ms),
    r.gflops !== undefined ? fmt(r.gflops, 1) : r.gbps !== undefined ? `${fmt(r.gbps, 1)} GB/s` : "-",
    r.pctPeak !== undefined ? `${fmt(r.pctPeak, 1)}%${r.bf16 ? " bf16" : ""}` : "-",
    r.cpuShare !== undefined ? `${fmt(100 * r.cpuShare, 0)}%` : "-",
    // compute-bound rows only: bandwidth does not scale with the share of the cores
    r.gflops !== undefined && r.cpuShare && r.pctPeak !== undefined ? `${fmt(r.pctPeak / r.cpuShare, 1)}%` : "-",
    r.torchMs !== undefined ? msText(r.torchMs) : "-",
    r.torchMs !== undefined ? `${fmt(r.torchMs / r.ms, 2)}x` : "-",
    r.note ?? "",
  ]);
  const all = [header, ...body];
  const widths = header.map((_, c) => Math.max(...all.map((line) => line[c].length)));
  const numeric = new Set([2, 3, 4, 5, 6, 7, 8]);
  const line = (cells: string[]) =>
    cells.map((s, c) => (numeric.has(c) ? s.padStart(widths[c]) : s.padEnd(widths[c]))).join("  ").trimEnd();
  const rule = widths.map((w) => "-".repeat(w)).join("  ");
  const out = [line(header), rule];
  let group = body.length ? body[0][0] : "";
  for (const cells of body) {
    if (cells[0] !== group) { out.push(""); group = cells[0]; }
    out.push(line(cells));
  }
  return out.join("\n");
}
