"""PyTorch baselines for the GPU benchmarks, at the shapes of benches/benches/gpu_gemm.rs.

Run on the GPU machine (PyTorch with CUDA): prints TFLOP/s of
  - torch.nn.functional.scaled_dot_product_attention, bf16, forward and forward + backward,
    at S = 1024..8192, head dims 64 and 128, 16 heads (FLOPs: forward 4*heads*S^2*d,
    backward 2.5x the forward, the standard FlashAttention counts);
  - torch.matmul in bf16 at 1024^3..8192^3 (cuBLAS, as a cross-check of our Rust cuBLAS calls).
"""

import torch
import torch.nn.functional as F


def timed(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3  # seconds


def main():
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    heads = 16
    for d in (64, 128):
        for s in (1024, 2048, 4096, 8192):
            q, k, v = (torch.randn(1, heads, s, d, device="cuda", dtype=torch.bfloat16,
                                   requires_grad=True) for _ in range(3))
            flops = 4 * heads * s * s * d
            forward = timed(lambda: F.scaled_dot_product_attention(q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
            grad = torch.randn_like(out)

            def both():
                o = F.scaled_dot_product_attention(q, k, v)
                o.backward(grad)

            total = timed(both)
            backward = max(total - forward, 1e-9)
            print(f"sdpa d={d} S={s}: forward {forward * 1e3:.3f} ms "
                  f"{flops / forward / 1e12:.1f} TFLOP/s; backward {backward * 1e3:.3f} ms "
                  f"{2.5 * flops / backward / 1e12:.1f} TFLOP/s")
    for n in (1024, 2048, 4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        t = timed(lambda: a @ b)
        print(f"torch.matmul bf16 {n}^3: {t * 1e3:.3f} ms {2 * n ** 3 / t / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
