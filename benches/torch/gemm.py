"""torch.matmul f32 at the DiT shapes of our `matmul_f32_dit_shapes` criterion group, in the
same three operand forms (a·b, a·bᵀ with bᵀ a transposed view, aᵀ·b), for
`benches/gemm-vs-torch.sh`. Prints one JSON line per product: form, shape, median seconds.

    python gemm.py --threads 2 [--seconds 2]
"""

import argparse
import json
import statistics
import time

import torch

SHAPES = [(2048, 384, 1152), (1024, 384, 1536), (512, 384, 1536), (512, 1536, 384)]


def median_seconds(product, seconds):
    """Median of as many timed calls as fit in `seconds` after a warm-up (at least 10)."""
    for _ in range(3):
        product()
    times, spent = [], 0.0
    while spent < seconds or len(times) < 10:
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for m, k, n in SHAPES:
        forms = {
            "a_b": (torch.randn(m, k), torch.randn(k, n)),
            "a_bt": (torch.randn(m, k), torch.randn(n, k).t()),
            "at_b": (torch.randn(k, m).t(), torch.randn(k, n)),
        }
        for form, (a, b) in forms.items():
            seconds = median_seconds(lambda: torch.matmul(a, b), args.seconds)
            print(json.dumps({"form": form, "shape": f"{m}x{k}x{n}", "seconds": seconds}))


if __name__ == "__main__":
    main()
