"""Turns one GPU bundle run into the tables of benches/RESULTS.md: ours against the baseline
of the same run, with the ratios the issues set targets for.

    python3 summarize.py LOG_FOLDER > tables.md

Reads LOG_FOLDER/bench-gpu_gemm.log (criterion's output) and, when present,
LOG_FOLDER/pytorch-baselines.log (benches/gpu/sdpa.py). A benchmark missing from the logs
shows as a dash, so a partial run still gives every table it can.
"""

import re
import sys
from pathlib import Path

UNITS = {"ps": 1e-12, "ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def criterion_medians(text):
    """{benchmark id: median seconds} from criterion's output. Criterion prints a long id on
    its own line and the `time:` line after it, a short one on the same line."""
    medians, previous = {}, ""
    for line in text.splitlines():
        if "time:" in line:
            name = line.split("time:")[0].strip() or previous
            values = re.search(r"\[([^\]]+)\]", line).group(1).split()
            # [low unit median unit high unit]
            medians[name] = float(values[2]) * UNITS[values[3]]
        elif line.strip() and not line.startswith(("Benchmarking", "Found", " ")):
            previous = line.strip()
    return medians


def sdpa_times(text):
    """{(head dim, tokens): (forward s, backward s)} from sdpa.py's output."""
    times = {}
    pattern = r"sdpa d=(\d+) S=(\d+): forward ([\d.]+) ms .*; backward ([\d.]+) ms"
    for d, s, forward, backward in re.findall(pattern, text):
        times[(int(d), int(s))] = (float(forward) * 1e-3, float(backward) * 1e-3)
    return times


def ms(seconds):
    return "—" if seconds is None else f"{seconds * 1e3:.3f} ms"


def us(seconds):
    return "—" if seconds is None else f"{seconds * 1e6:.1f} µs"


def tflops(flops, seconds):
    return "—" if seconds is None else f"{flops / seconds / 1e12:.0f}"


def ratio(ours, theirs, as_percent=True):
    if ours is None or theirs is None:
        return "—"
    return f"{theirs / ours * 100:.0f}%" if as_percent else f"{theirs / ours:.2f}×"


def best(*times):
    present = [t for t in times if t is not None]
    return min(present) if present else None


def gemm_shape(label):
    """(M, N, K) from a gpu_gemm label: "4096^3" or "S-ffn-up 16384x1536x384"."""
    cube = re.fullmatch(r"(\d+)\^3", label)
    if cube:
        return (int(cube.group(1)),) * 3
    rows, cols, depth = re.search(r"(\d+)x(\d+)x(\d+)", label).groups()
    return int(rows), int(cols), int(depth)


def gemm_table(m):
    get = lambda name, label: m.get(f"gpu_gemm/{name}/{label}")
    # The shapes, in the order the benchmark ran them.
    labels = list(dict.fromkeys(
        key.split("/", 2)[2] for key in m if key.startswith("gpu_gemm/cublas_bf16/")
        or key.startswith("gpu_gemm/ours_bf16/")))
    print("### GEMM: `gemm_bf16` (128×128 and 128×256 tiles) vs cuBLAS bf16 (target ≥ 50%)\n")
    print("| shape | ours 128×128 | ours 128×256 | cuBLAS | best ours TFLOP/s | best / cuBLAS |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        rows, cols, depth = gemm_shape(label)
        square, wide = get("ours_bf16", label), get("ours_bf16_wide", label)
        blas, ours = get("cublas_bf16", label), best(square, wide)
        flops = 2 * rows * cols * depth
        print(f"| {label} | {us(square)} | {us(wide)} | {us(blas)} | {tflops(flops, ours)} "
              f"| {ratio(ours, blas)} |")
    print()


def grouped_table(m):
    print("### Grouped expert GEMM, 16384 rows 384 → 1536 (targets: ≥ 70% of the equal-FLOP "
          "dense cuBLAS GEMM, ≥ 1.5× the per-expert cuBLAS loop)\n")
    print("| routing | ours 128×128 | ours 128×256 | ours, sizes on the device | per-expert "
          "loop | dense cuBLAS | best / dense | best vs loop |")
    print("|---|---|---|---|---|---|---|---|")
    for experts in (8, 16):
        for kind in ("balanced", "skewed"):
            label = f"{experts}E {kind}"
            get = lambda name: m.get(f"gpu_grouped_gemm/{name}/{label}")
            square, wide = get("ours_grouped"), get("ours_grouped_wide")
            device, loop = get("ours_grouped_device_sizes"), get("cublas_per_expert_loop")
            dense = m.get(f"gpu_grouped_gemm/cublas_dense_equal_flops/{experts}E")
            ours = best(square, wide)
            print(f"| {label} | {us(square)} | {us(wide)} | {us(device)} | {us(loop)} "
                  f"| {us(dense)} | {ratio(ours, dense)} | {ratio(ours, loop, False)} |")
    print()


def attention_table(m, sdpa):
    print("### FlashAttention-2 vs PyTorch SDPA, 16 heads, bf16 (targets: forward ≥ 60%, "
          "backward ≥ 50%)\n")
    print("| head dim | S | ours fwd | SDPA fwd | fwd ours/SDPA | ours bwd | SDPA bwd "
          "| bwd ours/SDPA | ours fwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in (64, 128):
        for s in (1024, 2048, 4096, 8192):
            forward = m.get(f"gpu_attention/ours_d{d}/{s}")
            backward = m.get(f"gpu_attention/ours_backward_d{d}/{s}")
            their_forward, their_backward = sdpa.get((d, s), (None, None))
            flops = 4 * 16 * s * s * d
            print(f"| {d} | {s} | {ms(forward)} | {ms(their_forward)} "
                  f"| {ratio(forward, their_forward)} | {ms(backward)} | {ms(their_backward)} "
                  f"| {ratio(backward, their_backward)} | {tflops(flops, forward)} |")
    print()


def versus_table(m, group, title, ours_name, baseline_name, labels):
    print(f"### {title}\n")
    print(f"| case | ours | baseline | speed-up |")
    print("|---|---|---|---|")
    for label in labels:
        suffix = f"/{label}" if label else ""
        ours = m.get(f"{group}/{ours_name}{suffix}")
        baseline = m.get(f"{group}/{baseline_name}{suffix}")
        print(f"| {label or '—'} | {us(ours)} | {us(baseline)} | {ratio(ours, baseline, False)} |")
    print()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py LOG_FOLDER")
    logs = Path(sys.argv[1])
    bench_log = logs / "bench-gpu_gemm.log"
    if not bench_log.exists():
        sys.exit(f"summarize.py: expected criterion's output in {bench_log}")
    medians = criterion_medians(bench_log.read_text(errors="replace"))
    sdpa_log = logs / "pytorch-baselines.log"
    sdpa = sdpa_times(sdpa_log.read_text(errors="replace")) if sdpa_log.exists() else {}
    gemm_table(medians)
    grouped_table(medians)
    attention_table(medians, sdpa)
    versus_table(medians, "gpu_routing", "MoE dispatch order: device counting sort vs host sort",
                 "ours_device", "host_sort", ["8", "16"])
    versus_table(medians, "gpu_expert_race", "Expert race selection: device radix select vs "
                 "host select", "ours_device", "host_select", ["8", "16"])
    versus_table(medians, "gpu_swiglu", "SwiGLU forward + backward: fused vs composed kernels",
                 "fused_forward_backward", "silu_then_mul_forward_backward", [""])


if __name__ == "__main__":
    main()
