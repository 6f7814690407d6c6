#!/usr/bin/env bash
# The training-step benchmark on a GPU: DiT-S/2-sized token-choice, expert-choice and dense
# models (configs in benches/gpu/step/), each trained first unprofiled (step time, from the
# img/s lines) and then with `--profile` (where the step's time goes, by section and kernel).
#
#   train-step.sh DITMOE_BINARY CONFIG_FOLDER LOG_FOLDER
#
# Every run has a time limit so that the whole script fits a short GPU lease (about 4 minutes).
set -uo pipefail
ditmoe="$1"
configs="$2"
logs="$3"
mkdir -p "$logs"
for variant in tc ec dense; do
    timeout -k 5 40 "$ditmoe" train --config "$configs/dit-s-$variant.toml" --device cuda \
        --steps 20 --out "/tmp/ditmoe-step-$variant" > "$logs/step-$variant.log" 2>&1 ||
        echo "FAILED: step-$variant (exit $?)"
    echo "$variant: $(grep 'img/s' "$logs/step-$variant.log" | tail -1)"
done
# Token choice again with the 128x256 GEMM tile, to compare inside a whole step.
DITMOE_GEMM_TILE=wide timeout -k 5 40 "$ditmoe" train --config "$configs/dit-s-tc.toml" \
    --device cuda --steps 20 --out /tmp/ditmoe-step-tc-wide > "$logs/step-tc-wide.log" 2>&1 ||
    echo "FAILED: step-tc-wide (exit $?)"
echo "tc, wide GEMM tile: $(grep 'img/s' "$logs/step-tc-wide.log" | tail -1)"
for variant in tc ec dense; do
    timeout -k 5 40 "$ditmoe" train --config "$configs/dit-s-$variant.toml" --device cuda \
        --steps 6 --profile --out "/tmp/ditmoe-profile-$variant" > "$logs/profile-$variant.md" 2>&1 ||
        echo "FAILED: profile-$variant (exit $?)"
    grep -E "^Training-step|^Forward and backward" "$logs/profile-$variant.md"
done
