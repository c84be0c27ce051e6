// `npm run bench`: the CPU backend against the machine's measured ceilings (FMA peak, streaming
// bandwidth) at Stable Diffusion shapes, PyTorch on the same cases when it is importable, whole
// U-Net / VAE passes, training steps of the built-in model, and the CUDA benchmark when a GPU answers. Prints a table; writes JSON to
// bench/results/<host>-<date>.json.
//
//   node dist/bench/main.js [--quick] [--only gemm,conv,attention,norm,unet,vae,train,cuda] [--no-torch] [--profile] [--json FILE]
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { buildInfo, devices, synchronize } from "../devices";
import { native, packageRoot, type CpuPeak } from "../native";
import { version } from "../version";
import { timingPolicy, withPeak, type BenchContext } from "./cpu-common";
import { modelGroups, runModelCases } from "./cpu-models";
import { opCases, opGroups, runOpCases } from "./cpu-ops";
import { findTorchPython, runTorchCases, torchKey, type TorchResult } from "./cpu-torch";
import { runCudaBench, type BenchRow } from "./cuda-bench";
import { runTrainCases, trainGroups } from "./cpu-train";
import { formatTable, type CpuBenchRow } from "./table";

const allGroups = [...opGroups, ...modelGroups, ...trainGroups, "cuda"] as const;
const aliases: Record<string, string[]> = { ops: [...opGroups], models: [...modelGroups] };

interface Options { quick: boolean; groups: Set<string>; torch: boolean; profile: boolean; json?: string }

function usage(): string {
  return "usage: node dist/bench/main.js [--quick] [--only GROUPS] [--no-torch] [--profile] [--json FILE]\n" +
    "  --profile: after each model row, the time per native op (CPU queue)\n" +
    `  GROUPS: comma-separated, from ${allGroups.join(", ")} (or ${Object.keys(aliases).join(", ")})`;
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { quick: false, groups: new Set(allGroups), torch: true, profile: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : argv[++i];
      if (v === undefined) throw new RangeError(`bench: ${a} needs a value\n${usage()}`);
      return v;
    };
    if (a === "--quick") opts.quick = true;
    else if (a === "--no-torch") opts.torch = false;
    else if (a === "--profile") opts.profile = true;
    else if (a === "--only" || a.startsWith("--only=")) {
      opts.groups = new Set();
      for (const g of value().split(",").map((s) => s.trim()).filter(Boolean)) {
        const names = aliases[g] ?? [g];
        for (const n of names) {
          if (!(allGroups as readonly string[]).includes(n)) throw new RangeError(`bench: unknown group "${g}" in --only (allowed: ${[...allGroups, ...Object.keys(aliases)].join(", ")})`);
          opts.groups.add(n);
        }
      }
    } else if (a === "--json" || a.startsWith("--json=")) opts.json = value();
    else if (a === "--help" || a === "-h") { console.log(usage()); process.exit(0); }
    else throw new RangeError(`bench: unknown argument "${a}"\n${usage()}`);
  }
  return opts;
}

function progress(row: CpuBenchRow): string {
  const rate = row.gflops !== undefined ? `${row.gflops.toFixed(1)} GFLOP/s` : row.gbps !== undefined ? `${row.gbps.toFixed(1)} GB/s` : "-";
  const cpu = row.cpuShare !== undefined ? `, cpu ${(100 * row.cpuShare).toFixed(0)}%` : "";
  return `  ${row.group} ${row.name}: ${row.ms.toFixed(2)} ms, ${rate} (${row.runs} runs${cpu})${row.note ? `; ${row.note}` : ""}`;
}

/**
 * The ceilings, measured on the pool. The FMA peak is counted per CPU-second of each thread, so
 * other processes on the cores do not lower it; bandwidth has no such correction, so main()
 * measures before and after and keeps the better of each. DIFFUSEKIT_CPU_PEAK_GFLOPS /
 * DIFFUSEKIT_CPU_BANDWIDTH_GBS pin them instead.
 */
function measurePeak(quick: boolean, before?: CpuPeak): CpuPeak {
  const m = native().measurePeak({ seconds: quick ? 0.3 : 1, bandwidthMiB: 256 });
  const best = (a: number | null, b: number | null | undefined) => (a === null ? null : Math.max(a, b ?? 0));
  const p: CpuPeak = before ? {
    ...m, fp32Gflops: Math.max(m.fp32Gflops, before.fp32Gflops), bf16Gflops: best(m.bf16Gflops, before.bf16Gflops),
    fp32GflopsCpu: Math.max(m.fp32GflopsCpu, before.fp32GflopsCpu), bf16GflopsCpu: best(m.bf16GflopsCpu, before.bf16GflopsCpu),
    scaleGBs: Math.max(m.scaleGBs, before.scaleGBs), triadGBs: Math.max(m.triadGBs, before.triadGBs),
  } : m;
  if (process.env.DIFFUSEKIT_CPU_PEAK_GFLOPS) p.fp32GflopsCpu = Number(process.env.DIFFUSEKIT_CPU_PEAK_GFLOPS);
  if (process.env.DIFFUSEKIT_CPU_BANDWIDTH_GBS) p.scaleGBs = Number(process.env.DIFFUSEKIT_CPU_BANDWIDTH_GBS);
  return p;
}

const peakLine = (p: CpuPeak) =>
  `fp32 ${p.fp32GflopsCpu.toFixed(1)} GFLOP/s (${p.fp32Kernel} FMA loop, ${p.threads} threads; ${p.fp32Gflops.toFixed(1)} over wall time)` +
  (p.bf16GflopsCpu !== null ? `, bf16 ${p.bf16GflopsCpu.toFixed(1)} GFLOP/s (vdpbf16ps)` : "") +
  `; bandwidth ${p.scaleGBs.toFixed(1)} GB/s scale, ${p.triadGBs.toFixed(1)} GB/s triad`;

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const log = (line: string) => console.log(line);
  const build = buildInfo();
  const cpuModel = os.cpus()[0]?.model ?? "unknown cpu";
  const load = os.loadavg().map((x) => x.toFixed(2)).join(" ");
  log(`diffusekit ${version} bench on ${os.hostname()}: ${cpuModel}, ${build.threads} threads, ${build.isa}, ${build.compiler}; node ${process.version}`);
  log(`load average ${load} (other processes on these cores lower every number below)${opts.quick ? "; --quick" : ""}`);

  // 1. ceilings
  await synchronize("cpu");
  const peakBefore = measurePeak(opts.quick);
  log(`peak (before): ${peakLine(peakBefore)}`);
  const ctx: BenchContext = { peak: peakBefore, quick: opts.quick, profile: opts.profile, log };

  // 2. op cases, then whole models
  const rows: CpuBenchRow[] = [];
  const cases = opCases(opts.groups, opts.quick);
  if (cases.length) log(`ops (median of several runs after a warm-up; % of the fp32 peak, norms of the scale bandwidth):`);
  rows.push(...(await runOpCases(cases, ctx, (r) => log(progress(r)))));
  if (modelGroups.some((g) => opts.groups.has(g))) {
    log("models (random weights from the sd15 configs, fp32 then bf16; flop counts GEMM/conv/attention only):");
    rows.push(...(await runModelCases(opts.groups, ctx, (r) => log(progress(r)))));
  }
  if (opts.groups.has("train")) {
    log("training (train() fine-tuning the built-in model on the shapes set; ms per optimiser step after 3 warm-up steps):");
    rows.push(...(await runTrainCases(ctx, (r) => log(progress(r)))));
  }

  // 3. PyTorch on the same op cases, same threads
  let torch: TorchResult | null = null;
  if (cases.length && opts.torch) {
    const python = findTorchPython();
    if (!python) log("torch: no python3 with torch importable (apt-get install python3-torch, or set DIFFUSEKIT_TORCH_PYTHON); torch columns left empty");
    else {
      log(`torch (${python}) on the same cases, ${peakBefore.threads} threads:`);
      // PyTorch runs the float32 cases (the bf16 rows compare against our own fp32 rows).
      torch = runTorchCases(python, cases.filter((c) => c.group !== "attention" || c.dtype !== "bfloat16"), peakBefore.threads, timingPolicy(opts.quick), log);
      if (torch)
        for (const r of rows) {
          r.torchMs = torch.ms.get(torchKey(r.group, r.name));
          r.torchCpuShare = torch.cpuShare.get(torchKey(r.group, r.name));
        }
    }
  }

  // 4. ceilings again: % of peak uses the better of the two measurements
  await synchronize("cpu");
  const peak = measurePeak(opts.quick, peakBefore);
  for (const r of rows) withPeak(r, peak);
  log(`peak (best of before/after): ${peakLine(peak)}`);
  log("");
  log(formatTable(rows));
  log(`% peak: of the fp32 FMA peak (bf16 rows: of the vdpbf16ps peak; norms: of the scale bandwidth); cpu: process CPU time / (wall x ${peak.threads} threads), low when` +
    ` other processes held the cores; %pk/cpu: % peak / cpu; torch/ours > 1: diffusekit is faster` + (torch ? ` (torch ${torch.version}, BLAS ${torch.blas.split(", ").map((p) => path.basename(p)).join(" ")})` : ""));

  // 5. CUDA, when a GPU answers
  let cudaRows: BenchRow[] | undefined;
  const cuda = devices().find((d) => d.type === "cuda");
  if (opts.groups.has("cuda") && cuda) {
    log("");
    cudaRows = await runCudaBench("cuda:0", "float16", log);
  } else if (opts.groups.has("cuda")) {
    log(build.cuda ? "cuda: no CUDA device answered; skipped" : "cuda: this build has no CUDA backend; skipped");
  }

  // 6. JSON
  const stamp = new Date().toISOString().slice(0, 19).replace(/:/g, "-");
  const file = opts.json ?? path.join(packageRoot, "bench", "results", `${os.hostname()}-${stamp}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({
    version, date: new Date().toISOString(), host: os.hostname(), cpu: cpuModel, loadAverage: os.loadavg(),
    node: process.version, build, quick: opts.quick, groups: [...opts.groups], peak, peakBefore,
    torch: torch ? { version: torch.version, python: torch.python, blas: torch.blas } : null,
    rows, cuda: cudaRows ? { device: cuda, dtype: "float16", rows: cudaRows } : null,
  }, null, 1));
  log(`wrote ${path.relative(process.cwd(), file) || file}`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
