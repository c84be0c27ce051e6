#!/usr/bin/env python3
"""The CPU benchmark's op cases through PyTorch (CPU, fp32) on the same threads, for the
"torch/ours" column of `npm run bench`. Not a package dependency; skipped when torch is absent.

Usage: python3 scripts/torch-cpu-bench.py CASES.json OUT.json
CASES.json: {"threads": n, "policy": {warmup, minRuns, maxRuns, budgetMs}, "cases": [...]} as
written by lib/bench/main.ts (shapes in diffusekit's layout; see lib/bench/cpu-common.ts).
OUT.json: {"torch": version, "threads": n, "blas": loaded BLAS library, "rows": [{"group", "name", "ms", "runs", "cpuShare"}]}.
Convolutions run channels_last (the NHWC layout diffusekit uses), group norms NCHW (torch 1.13's
channels_last group_norm is a slow fallback); attention is softmax(q k^T * scale) v as torch 1.13
has no fused CPU attention. "cpuShare" = process CPU time / (wall x threads), as in the table.
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def time_case(fn, policy, threads):
    for _ in range(policy["warmup"]):
        fn()
    times, spent = [], 0.0
    cpu0 = time.process_time()
    while len(times) < policy["maxRuns"] and (len(times) < policy["minRuns"] or spent < policy["budgetMs"]):
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        spent += ms
    cpu_share = (time.process_time() - cpu0) * 1e3 / (spent * threads)
    return statistics.median(times), len(times), cpu_share


def prepare(c):
    g = c["group"]
    dt = torch.bfloat16 if c.get("dtype") == "bfloat16" else torch.float32
    if g == "gemm":
        a = torch.randn(c["M"], c["K"]).to(dt)
        if c["kind"] == "matmul":
            b = torch.randn(c["K"], c["N"]).to(dt)
            return lambda: torch.matmul(a, b)
        w = torch.randn(c["N"], c["K"]).to(dt)
        return lambda: F.linear(a, w)
    if g == "conv":
        x = torch.randn(c["N"], c["C"], c["H"], c["W"]).to(dt).to(memory_format=torch.channels_last)
        w = torch.randn(c["K"], c["C"], c["R"], c["R"]).to(dt).to(memory_format=torch.channels_last)
        pad = (c["R"] - 1) // 2
        return lambda: F.conv2d(x, w, padding=pad)
    if g == "attention":
        B, H, D = c["B"], c["heads"], c["D"]
        q, k, v = torch.randn(B, H, c["Nq"], D), torch.randn(B, H, c["Nk"], D), torch.randn(B, H, c["Nk"], D)
        scale = D ** -0.5
        return lambda: torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1).matmul(v)
    if g == "norm":
        shape = c["shape"]
        C = shape[-1]
        wt, bs = torch.ones(C), torch.zeros(C)
        if c["kind"] == "groupnorm":
            # NCHW: torch 1.13's channels_last group_norm on CPU is a slow fallback
            N, Hh, W = shape[0], shape[1], shape[2]
            x = torch.randn(N, C, Hh, W)
            if c.get("silu"):
                return lambda: F.silu(F.group_norm(x, c["groups"], wt, bs))
            return lambda: F.group_norm(x, c["groups"], wt, bs)
        x = torch.randn(*shape)
        return lambda: F.layer_norm(x, (C,), wt, bs)
    raise ValueError(f"unknown case group {g!r}")


def loaded_blas():
    """The BLAS shared library torch's matmul loaded (Debian's torch takes whatever libblas.so.3 points at)."""
    torch.matmul(torch.ones(64, 64), torch.ones(64, 64))
    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "blas" in line.lower() and "/" in line}
    except OSError:
        return "unknown"
    return ", ".join(sorted(libs)) or "none found (torch's own / MKL)"


def main():
    spec = json.load(open(sys.argv[1]))
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    rows = []
    with torch.no_grad():
        for c in spec["cases"]:
            fn = prepare(c)
            ms, runs, cpu_share = time_case(fn, spec["policy"], threads)
            rows.append({"group": c["group"], "name": c["name"], "ms": ms, "runs": runs, "cpuShare": cpu_share})
            print(f"  torch {c['group']:9s} {c['name']:42s} {ms:10.3f} ms (cpu {100 * cpu_share:.0f}%)", file=sys.stderr, flush=True)
            del fn
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "blas": loaded_blas(), "rows": rows}, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
