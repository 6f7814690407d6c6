#!/usr/bin/env bash
# Our CPU GEMM against torch.matmul (f32, MKL / oneDNN) at the DiT shapes, in every operand form
# a training step uses, in one run: ROUNDS rounds, each running our criterion group
# `matmul_f32_dit_shapes` (benches/benches/tensor_ops.rs) and benches/torch/gemm.py, alternating
# which goes first, both on THREADS threads. Prints medians over the rounds and the ratio
# torch time / ours (> 1: ours is faster). Not part of CI.
#
#   benches/gemm-vs-torch.sh      (about 5 minutes on 2 idle cores with the defaults)
#
# Environment (all optional): ROUNDS (default 3), THREADS (default 2), RESULTS=FILE.md (also
# write the table there).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rounds="${ROUNDS:-3}"
threads="${THREADS:-2}"

source benches/torch/venv.sh
cargo bench -p ditmoe-benches --bench tensor_ops --no-run --quiet
logs="$(mktemp -d "${TMPDIR:-/tmp}/gemm-vs-torch.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
criterion_dir="${CARGO_TARGET_DIR:-target}/criterion/matmul_f32_dit_shapes"

ours() {
    DITMOE_THREADS="$threads" cargo bench -p ditmoe-benches --bench tensor_ops --quiet -- \
        matmul_f32_dit_shapes --noplot >"$logs/ours-$1.log" 2>&1
    # criterion's median of this run, per product, in seconds.
    "$py" - "$criterion_dir" >"$logs/ours-$1.jsonl" <<'PY'
import json, pathlib, sys
for estimates in sorted(pathlib.Path(sys.argv[1]).glob("*/*/new/estimates.json")):
    form, shape = estimates.parts[-4], estimates.parts[-3]
    seconds = json.loads(estimates.read_text())["median"]["point_estimate"] * 1e-9
    print(json.dumps({"form": form, "shape": shape, "seconds": seconds}))
PY
}

theirs() {
    OMP_NUM_THREADS="$threads" "$py" benches/torch/gemm.py --threads "$threads" \
        >"$logs/torch-$1.jsonl"
}

for r in $(seq 1 "$rounds"); do
    echo "== round $r of $rounds"
    if [ $((r % 2)) = 1 ]; then ours "$r"; theirs "$r"; else theirs "$r"; ours "$r"; fi
done

"$py" - "$logs" "$rounds" "${RESULTS:-}" <<'PY'
import json, pathlib, statistics, sys
logs, rounds, results = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def medians(side):
    runs = {}
    for r in range(1, rounds + 1):
        for line in (logs / f"{side}-{r}.jsonl").read_text().splitlines():
            row = json.loads(line)
            runs.setdefault((row["shape"], row["form"]), []).append(row["seconds"])
    return {key: statistics.median(v) for key, v in runs.items()}
ours, torch = medians("ours"), medians("torch")
names = {"a_b": "a·b (dX = dy·W)", "a_bt": "a·bᵀ (forward x·Wᵀ)", "at_b": "aᵀ·b (dW = dyᵀ·x)"}
lines = ["| m×k×n | form | ditmoe GFLOP/s | torch.matmul GFLOP/s | torch time / ours |",
         "|---|---|---:|---:|---:|"]
for shape, form in sorted(torch, key=lambda key: (key[0], key[1])):
    m, k, n = map(int, shape.split("x"))
    flops = 2 * m * k * n
    a, b = ours[(shape, form)], torch[(shape, form)]
    lines.append(f"| {shape} | {names[form]} | {flops / a / 1e9:.0f} | {flops / b / 1e9:.0f} | {b / a:.2f} |")
table = "\n".join(lines)
print(table)
if results:
    pathlib.Path(results).write_text(table + "\n")
PY
