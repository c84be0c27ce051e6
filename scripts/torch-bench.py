#!/usr/bin/env python3
"""The CUDA benchmark's cases through PyTorch on the same card, for the ratio column.
Usage: python3 scripts/torch-bench.py OUT.json [float16|bfloat16]"""
import json, sys, time
import torch
import torch.nn.functional as F

out_path = sys.argv[1]
dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[sys.argv[2] if len(sys.argv) > 2 else "float16"]
dev = "cuda"
rows = []

def bench(group, name, fn, flop, iters=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters): fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    rows.append({"group": group, "name": name, "ms": ms, "tflops": flop / ms / 1e9})
    print(f"torch {group:10s} {name:40s} {ms:9.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s", flush=True)

with torch.no_grad():
    for M, K, N in [(8192, 320, 320), (8192, 320, 1280), (8192, 1280, 320), (2048, 640, 640), (512, 1280, 1280), (8192, 320, 2560), (4096, 4096, 4096)]:
        x = torch.randn(M, K, device=dev, dtype=dt); w = torch.randn(N, K, device=dev, dtype=dt)
        bench("gemm", f"M={M} K={K} N={N}", lambda: F.linear(x, w), 2 * M * N * K)
    for H, C in [(64, 320), (32, 640), (16, 1280), (8, 1280)]:
        x = torch.randn(2, C, H, H, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        w = torch.randn(C, C, 3, 3, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        bench("conv3x3", f"2x{H}x{H}x{C}->{C}", lambda: F.conv2d(x, w, padding=1), 2 * 2 * H * H * C * C * 9, 10)
    for Nq, Nk, D in [(4096, 4096, 40), (4096, 4096, 64), (1024, 1024, 80), (4096, 77, 40), (256, 256, 160)]:
        q = torch.randn(2, 8, Nq, D, device=dev, dtype=dt); k = torch.randn(2, 8, Nk, D, device=dev, dtype=dt); v = torch.randn(2, 8, Nk, D, device=dev, dtype=dt)
        bench("attention", f"Nq={Nq} Nk={Nk} D={D}", lambda: F.scaled_dot_product_attention(q, k, v), 4 * 2 * 8 * Nq * Nk * D, 10)
    for H, C in [(64, 320), (32, 640), (128, 256)]:
        x = torch.randn(2, C, H, H, device=dev, dtype=dt); g = torch.randn(C, device=dev, dtype=dt); b = torch.randn(C, device=dev, dtype=dt)
        def gn(): return F.silu(F.group_norm(x, 32, g, b))
        for _ in range(3): gn()
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(20): gn()
        torch.cuda.synchronize(); ms = (time.perf_counter() - t0) * 1e3 / 20
        rows.append({"group": "groupnorm", "name": f"2x{H}x{H}x{C} +silu", "ms": ms, "gbps": 2 * x.numel() * x.element_size() / ms / 1e6})
        print(f"torch groupnorm  2x{H}x{H}x{C} +silu {ms:9.3f} ms", flush=True)

json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "rows": rows}, open(out_path, "w"), indent=1)
