#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation (stable Rust) and runs each under
# libFuzzer for FUZZ_SECONDS (default 30) seconds, starting from its committed corpus.
# Fails, naming the reproducer, on any crash, abort, over-limit allocation or hang.
#
#   fuzz/run.sh                     # every target
#   FUZZ_SECONDS=300 fuzz/run.sh idx cifar
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-30}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
# The flags `cargo fuzz build --sanitizer none` uses; `--target` keeps them off build scripts.
# Not `--locked`: a dependency added to the workspace adds its entry to fuzz/Cargo.lock here.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$triple" --bins

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=($(ls corpus))
fi
work="${FUZZ_WORK:-target/fuzz-work}"
mkdir -p "$work" && work="$(cd "$work" && pwd)"
export RUST_BACKTRACE=1
# A crash's report without libFuzzer's progress lines.
report() { grep -v -E '^(#[0-9]+|INFO:|[[:space:]]*"|###)' "$1" | tail -n 80; }
failed=()
for target in "${targets[@]}"; do
    echo "== fuzz $target (${seconds}s)"
    binary="target/$triple/release/fuzz_$target"
    # Saved reproducers first (with overflow checks, which `cargo test --release` lacks).
    if [ -d "regressions/$target" ] && ! "$binary" regressions/"$target"/* >"$work/$target.replay" 2>&1; then
        report "$work/$target.replay"
        echo "fuzz $target FAILED: a saved reproducer in fuzz/regressions/$target crashes again"
        failed+=("$target")
        continue
    fi
    # New inputs go to the work folder; the committed corpus is only read.
    rm -rf "$work/$target/artifacts"
    mkdir -p "$work/$target/corpus" "$work/$target/artifacts"
    if ! "$binary" "$work/$target/corpus" "corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -artifact_prefix="$work/$target/artifacts/" -print_final_stats=1 2>"$work/$target/log"; then
        report "$work/$target/log"
        echo "fuzz $target FAILED; reproducer: $(ls -d "$work/$target/artifacts/"*)"
        failed+=("$target")
    else
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$work/$target/log" || true
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (see fuzz/README.md, 'A finding')"
    exit 1
fi
echo "fuzzing found nothing new (${seconds}s per target)"
