#!/usr/bin/env bash
# The CPU training-step benchmark: our `ditmoe train` against the same step in PyTorch eager
# (benches/torch/step.py), on the configs of benches/cpu/ (DiT-MoE-S/4, DiT-MoE-S/2 and dense
# DiT-S/2, batch 8), both sides with the same number of threads, run interleaved so that a
# change of machine load hits both. Not part of CI. See benches/torch/README.md.
#
#   benches/cpu-step.sh          (from anywhere; about 12 minutes on 2 idle cores with the defaults)
#
# Environment (all optional):
#   DITMOE=PATH        our binary (default target/release/ditmoe; build it first with
#                      `cargo build --release -p ditmoe-experiments`)
#   STEPS=N            steps per run (default 4); the first step of every run is warmup, left out
#   ROUNDS=R           runs of each side per config (default 3), alternating ours-first and
#                      PyTorch-first
#   THREADS=T          threads of both sides (default 2): DITMOE_THREADS and torch.set_num_threads
#   CONFIGS="A.toml …" the configs (default the three of benches/cpu/)
#   TORCH_ADAMW=default|foreach|fused   torch.optim.AdamW's implementation (default: default)
#   RESULTS=FILE.md    also write the table there (markdown)
#   LOGS=DIR           keep every run's logs there (default: a temporary folder, removed)
# Relative paths are taken from the repository root.
#
# First it installs PyTorch into benches/torch/.venv if that is missing, then checks the
# PyTorch model against the reference fixtures (benches/torch/check_parity.py: it exits here
# on a mismatch), then runs the rounds, then checks each config's checkpoint of ours against
# the PyTorch model at full size and prints the table.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

ditmoe="${DITMOE:-target/release/ditmoe}"
steps="${STEPS:-4}"
rounds="${ROUNDS:-3}"
threads="${THREADS:-2}"
configs="${CONFIGS:-benches/cpu/dit-moe-s4.toml benches/cpu/dit-moe-s2.toml benches/cpu/dit-s2.toml}"
adamw="${TORCH_ADAMW:-default}"

if [ ! -x "$ditmoe" ]; then
    echo "cpu-step: no binary at $ditmoe; build it with" \
        "\`cargo build --release -p ditmoe-experiments\` or set DITMOE" >&2
    exit 2
fi
if [ "$steps" -lt 2 ]; then
    echo "cpu-step: STEPS must be at least 2 (the first step is warmup)" >&2
    exit 2
fi

# PyTorch into benches/torch/.venv (once).
source benches/torch/venv.sh

# Wall, user and system seconds and max RSS of a command: GNU time where it is installed,
# else a small getrusage(RUSAGE_CHILDREN) wrapper. `timed FILE COMMAND…`
timed() {
    local out="$1"
    shift
    if [ -x /usr/bin/time ] && /usr/bin/time -f '%e' -o /dev/null true 2>/dev/null; then
        /usr/bin/time -f '%e %U %S %M' -o "$out" "$@"
    else
        "$py" benches/torch/rusage.py "$out" "$@"
    fi
}

logs="${LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/cpu-step-logs.XXXXXX")}"
mkdir -p "$logs"
runs="$(mktemp -d "${TMPDIR:-/tmp}/cpu-step-runs.XXXXXX")"
trap 'rm -rf "$runs"; [ -n "${LOGS:-}" ] || rm -rf "$logs"' EXIT

echo "== parity of the PyTorch model with the reference fixtures"
"$py" benches/torch/check_parity.py --threads "$threads"

# One run of our side: its metrics log and time kept, its run directory removed (an S/2 MoE
# checkpoint is ~3 GB) except in round 1, whose checkpoint is checked below.
ours() {
    local name="$1" cfg="$2" r="$3" out="$runs/$1-$3"
    if ! DITMOE_THREADS="$threads" timed "$logs/$name-ours-$r.time" \
        "$ditmoe" train --config "$cfg" --out "$out" --steps "$steps" --overwrite \
        >"$logs/$name-ours-$r.log" 2>&1; then
        echo "cpu-step: ours failed on $cfg:" >&2
        tail -5 "$logs/$name-ours-$r.log" >&2
        exit 1
    fi
    cp "$out/metrics.jsonl" "$logs/$name-ours-$r.jsonl"
    echo "   ours:    $("$py" benches/torch/summarize.py --run "$logs/$name-ours-$r.jsonl")"
    if [ "$r" = 1 ]; then
        "$py" benches/torch/check_parity.py --no-fixtures --threads "$threads" \
            --checkpoint "$out/checkpoint" --ditmoe "$ditmoe" >"$logs/$name-checkpoint.txt" 2>&1 ||
            true
    fi
    rm -rf "$out"
}

torch_side() {
    local name="$1" cfg="$2" r="$3"
    if ! OMP_NUM_THREADS="$threads" timed "$logs/$name-torch-$r.time" \
        "$py" benches/torch/step.py --config "$cfg" --steps "$steps" --threads "$threads" \
        --adamw "$adamw" >"$logs/$name-torch-$r.jsonl" 2>"$logs/$name-torch-$r.log"; then
        echo "cpu-step: PyTorch failed on $cfg:" >&2
        tail -5 "$logs/$name-torch-$r.log" >&2
        exit 1
    fi
    echo "   PyTorch: $("$py" benches/torch/summarize.py --run "$logs/$name-torch-$r.jsonl")"
}

names=()
for cfg in $configs; do
    name="$(basename "$cfg" .toml)"
    names+=("$name")
    for r in $(seq 1 "$rounds"); do
        echo "== $name, round $r of $rounds ($steps steps per side)"
        if [ $((r % 2)) = 1 ]; then
            ours "$name" "$cfg" "$r"
            torch_side "$name" "$cfg" "$r"
        else
            torch_side "$name" "$cfg" "$r"
            ours "$name" "$cfg" "$r"
        fi
    done
done

echo "== checkpoints of ours in the PyTorch model (eval forward vs \`ditmoe forward\`)"
failed=0
for name in "${names[@]}"; do
    echo "-- $name"
    tail -n +2 "$logs/$name-checkpoint.txt"
    grep -q "parity: ok" "$logs/$name-checkpoint.txt" || failed=1
done

echo "== results"
"$py" benches/torch/summarize.py "$logs" "${names[@]}" --binary "$ditmoe" \
    ${RESULTS:+--results "$RESULTS"}
if [ "$failed" = 1 ]; then
    echo "cpu-step: a checkpoint check failed (see above)" >&2
    exit 1
fi
