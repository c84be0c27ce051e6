"""PyTorch scaled_dot_product_attention at ops_lab's attention shapes, for comparison.

Layout as ops_lab's: q/k/v stored [B, N, H, D] (token-major) and viewed [B, H, N, D], the
transposed view SD's attention blocks hand to SDPA. Prints the default backend's time and
each explicit backend's; TFLOP/s = 2*B*H*Nq*Nk*(D+Dv)/t, median of 20 after warm-up.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    print(f"sdpa baseline on {torch.cuda.get_device_name()} torch {torch.__version__}")
    B, H = 2, 8
    for nq, nk, d in [(4096, 4096, 40), (4096, 4096, 64), (1024, 1024, 80), (4096, 77, 40)]:
        for dt in (torch.float16, torch.bfloat16):
            q = torch.randn(B, nq, H, d, device="cuda", dtype=dt).transpose(1, 2)
            k = torch.randn(B, nk, H, d, device="cuda", dtype=dt).transpose(1, 2)
            v = torch.randn(B, nk, H, d, device="cuda", dtype=dt).transpose(1, 2)
            flops = 2.0 * B * H * nq * nk * (d + d)
            for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION),
                                  ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
                try:
                    if backend is None:
                        fn = lambda: F.scaled_dot_product_attention(q, k, v)
                    else:
                        def fn(backend=backend):
                            with sdpa_kernel(backend):
                                return F.scaled_dot_product_attention(q, k, v)
                    ms = median_ms(fn)
                    print(f"  sdpa {str(dt)[6:]:8s} Nq={nq:<5d} Nk={nk:<5d} D={d:<3d} {name:10s} "
                          f"{ms:8.4f} ms {flops / (ms * 1e-3) / 1e12:7.1f} TFLOP/s")
                except Exception as e:  # a backend that cannot take the shape
                    print(f"  sdpa {str(dt)[6:]:8s} Nq={nq} Nk={nk} D={d} {name}: unavailable ({type(e).__name__})")


if __name__ == "__main__":
    main()
