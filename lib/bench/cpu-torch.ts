// PyTorch's time for the same op cases (scripts/torch-cpu-bench.py), when a python3 with torch
// is importable. Not a dependency: without it the torch columns stay empty.
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { packageRoot } from "../native";
import type { OpCase, TimingPolicy } from "./cpu-common";

export interface TorchResult {
  version: string; python: string; blas: string;
  ms: Map<string, number>;
  /** Process CPU time / (wall x threads) while each case was timed. */
  cpuShare: Map<string, number>;
}

const key = (group: string, name: string) => `${group}\u0000${name}`;
export const torchKey = key;

/** The first of $DIFFUSEKIT_TORCH_PYTHON, python3, /usr/bin/python3 that imports torch, or null. */
export function findTorchPython(): string | null {
  const candidates = [process.env.DIFFUSEKIT_TORCH_PYTHON, "python3", "/usr/bin/python3"].filter((p): p is string => !!p);
  for (const py of [...new Set(candidates)]) {
    const r = spawnSync(py, ["-c", "import torch"], { stdio: "ignore", timeout: 120_000 });
    if (r.status === 0) return py;
  }
  return null;
}

export function runTorchCases(python: string, cases: readonly OpCase[], threads: number, policy: TimingPolicy, log: (line: string) => void): TorchResult | null {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "diffusekit-bench-"));
  try {
    const specFile = path.join(dir, "cases.json"), outFile = path.join(dir, "torch.json");
    fs.writeFileSync(specFile, JSON.stringify({ threads, policy, cases }));
    const script = path.join(packageRoot, "scripts", "torch-cpu-bench.py");
    const r = spawnSync(python, [script, specFile, outFile], { stdio: ["ignore", "inherit", "inherit"] });
    if (r.status !== 0 || !fs.existsSync(outFile)) {
      log(`torch: ${script} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`}); torch columns left empty`);
      return null;
    }
    const out = JSON.parse(fs.readFileSync(outFile, "utf8")) as { torch: string; blas: string; rows: { group: string; name: string; ms: number; cpuShare: number }[] };
    if (/\/blas\/libblas/.test(out.blas)) log(`torch: its BLAS is the reference netlib build (${out.blas}): GEMM ratios are meaningless; apt-get install libopenblas0-pthread`);
    return {
      version: out.torch, python, blas: out.blas,
      ms: new Map(out.rows.map((row) => [key(row.group, row.name), row.ms])),
      cpuShare: new Map(out.rows.map((row) => [key(row.group, row.name), row.cpuShare])),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
