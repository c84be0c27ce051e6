#!/usr/bin/env python3
"""Summarises an `nsys stats --report cuda_gpu_kern_sum --format csv` table: the kernels that take
the most GPU time, per profiled step. Usage: python3 scripts/kernel-summary.py KERNELS.csv STEPS"""
import csv, sys

path, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
lines = open(path).read().splitlines()
start = next((i for i, l in enumerate(lines) if "Total Time" in l), None)
if start is None:
    print("kernel-summary: no kernel table in", path); sys.exit(0)
rows = list(csv.DictReader(lines[start:]))
total = sum(float(r["Total Time (ns)"]) for r in rows)
print(f"all kernels: {total / 1e6 / steps:.3f} ms per step ({len(rows)} kernel kinds; includes the warm-up and weight init)")
print(f"{'% time':>7} {'ms/step':>8} {'calls/step':>10} {'avg us':>8}  kernel")
for r in sorted(rows, key=lambda r: -float(r["Total Time (ns)"]))[:30]:
    t = float(r["Total Time (ns)"])
    name = r["Name"].replace("dk::cuda::", "")
    print(f"{100 * t / total:7.1f} {t / 1e6 / steps:8.3f} {int(r['Instances']) / steps:10.1f} {float(r['Avg (ns)']) / 1e3:8.1f}  {name[:110]}")
