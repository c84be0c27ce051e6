#!/usr/bin/env python3
"""Summarises an Nsight Compute table (`ncu --csv --page raw --metrics gpu__time_duration.sum`):
GPU time per kernel family and per launch shape, per profiled step.
Usage: python3 scripts/kernel-summary.py NCU.csv STEPS [MARKER]
With MARKER (a kernel name part, e.g. timestep_kernel, the first kernel of a U-Net forward) only
the launches from its last occurrence count: the last step, without one-time setup work."""
import csv, re, sys
from collections import defaultdict

path, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
lines = [l for l in open(path, errors="replace").read().splitlines() if l.startswith('"')]
table = list(csv.DictReader(lines))
rows = [r for r in table if r.get("ID", "").strip().isdigit()]
if not rows:
    print("kernel-summary: no kernel rows in", path); sys.exit(0)
if len(sys.argv) > 3:
    marks = [i for i, r in enumerate(rows) if sys.argv[3] in r["Kernel Name"]]
    if marks:
        rows, steps = rows[marks[-1]:], 1
col = next(c for c in rows[0] if c.startswith("gpu__time_duration"))
units = next((r[col] for r in table if not r.get("ID", "").strip()), "nsecond")  # the row under the header
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(units.strip(), 1e-3)  # -> microseconds

def us(r):
    v = float(r[col].replace(",", ""))
    return v * scale

def family(name):
    name = re.sub(r"^void ", "", name).replace("dk::cuda::", "")
    base = re.sub(r"\(.*$", "", name)
    return base[:90]

total = sum(us(r) for r in rows)
print(f"{len(rows)} launches, {total / 1e3 / steps:.3f} ms of kernel time per step (kernels back to back, no launch gaps)")
fam = defaultdict(lambda: [0.0, 0])
shape = defaultdict(lambda: [0.0, 0])
for r in rows:
    t = us(r)
    f = family(r["Kernel Name"])
    fam[f][0] += t; fam[f][1] += 1
    k = (f, r.get("Grid Size", ""), r.get("Block Size", ""))
    shape[k][0] += t; shape[k][1] += 1
print(f"{'% time':>7} {'ms/step':>8} {'calls/step':>10}  kernel family")
for f, (t, n) in sorted(fam.items(), key=lambda x: -x[1][0])[:25]:
    print(f"{100 * t / total:7.1f} {t / 1e3 / steps:8.3f} {n / steps:10.1f}  {f}")
print(f"\n{'% time':>7} {'ms/step':>8} {'calls/step':>10} {'avg us':>8}  kernel, grid, block (top launch shapes)")
for (f, g, b), (t, n) in sorted(shape.items(), key=lambda x: -x[1][0])[:40]:
    print(f"{100 * t / total:7.1f} {t / 1e3 / steps:8.3f} {n / steps:10.1f} {t / n:8.1f}  {f[:60]} grid {g} block {b}")
