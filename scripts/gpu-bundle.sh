#!/usr/bin/env bash
# Builds, here, everything the GPU check runs — the CUDA test binaries and the GPU benchmark
# binary — and puts them with run.sh into one folder (default: gpu-bundle/) to copy to a
# machine with an NVIDIA GPU, its driver and compute-sanitizer. Nothing is compiled there.
#
#   scripts/gpu-bundle.sh [FOLDER]
#   FOLDER/run.sh [LOG_FOLDER] [all|checks|benchmarks]     # on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="${1:-gpu-bundle}"
rm -rf "$bundle"
mkdir -p "$bundle/bin"

# Prints "name path" for every test or bench executable cargo builds with the given arguments.
executables() {
    cargo "$@" --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if msg["target"]["kind"] != ["bin"]:
        print(msg["target"]["name"], msg["executable"])
'
}

# Copies a binary without its debug information (the bundle travels; symbols stay here).
install() {
    cp "$1" "$2"
    strip --strip-debug "$2" 2>/dev/null || true
}

echo "building the CUDA test binaries"
executables test --release -p ditmoe-cuda --no-run | while read -r name path; do
    install "$path" "$bundle/bin/test-$name"
done
# The device-path tests of the other crates (run.sh filters them to their GPU tests).
executables test --release -p ditmoe-tensor --lib --no-run | while read -r name path; do
    install "$path" "$bundle/bin/gpu-test-$name"
done
executables test --release -p ditmoe-nn --test cuda_step --no-run | while read -r name path; do
    install "$path" "$bundle/bin/gpu-test-$name"
done
executables test --release -p ditmoe-experiments --lib --no-run | while read -r name path; do
    install "$path" "$bundle/bin/gpu-test-$name"
done
echo "building the GPU benchmark"
executables bench -p ditmoe-benches --bench gpu_gemm --no-run | while read -r name path; do
    install "$path" "$bundle/bin/bench-$name"
done
echo "building the ditmoe CLI (for the end-to-end training run)"
cargo build --release -p ditmoe-experiments --bin ditmoe
install target/release/ditmoe "$bundle/bin/ditmoe"
mkdir -p "$bundle/configs"
cp experiments/configs/*.toml "$bundle/configs/"
# The `full` ablation preset at its real shapes with a smoke-test budget (60 steps per variant,
# a small evaluation): shows that it runs on the GPU and how long its steps take there.
sed -e 's/^steps = 20000/steps = 60/' -e 's/^warmup_steps = 500/warmup_steps = 10/' \
    -e 's/^checkpoint_every = 1000/checkpoint_every = 60/' -e 's/^log_every = 50/log_every = 20/' \
    -e 's/^samples_per_class = 100/samples_per_class = 2/' -e 's/^sample_steps = 50/sample_steps = 5/' \
    -e 's/^real_images = 5000/real_images = 100/' \
    -e 's/^specialization_images = 256/specialization_images = 16/' \
    -e 's/steps = 3000, batch_size = 128/steps = 50, batch_size = 128/' \
    experiments/ablations/full.toml > "$bundle/configs/full-smoke.toml"
cp benches/gpu/sdpa.py benches/gpu/train-step.sh benches/gpu/summarize.py "$bundle/"
mkdir -p "$bundle/configs/step"
cp benches/gpu/step/*.toml "$bundle/configs/step/"

cat > "$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU check, in two parts that each fit one 10-minute command:
#   checks      every CUDA test (on the GPU only: the emulator runs passed where the bundle was
#               built), compute-sanitizer memcheck on every kernel test binary and racecheck on
#               those with shared memory, a short tiny-moe training run on the GPU and on the
#               CPU, and the `full` ablation at a smoke budget, to its report;
#   benchmarks  the criterion benchmarks, the training-step benchmark and PyTorch's baselines.
# `all` (the default) runs both. Every step has a time limit so that a part ends inside a GPU
# lease. Logs go to LOG_FOLDER (default: $OUT/gpu-logs, or ./gpu-logs); summary.txt lists each
# step.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
logs="${1:-${OUT:-$here}/gpu-logs}"
part="${2:-all}"
case "$part" in
    all | checks | benchmarks) ;;
    *)
        echo "run.sh: expected the part to be all, checks or benchmarks, found '$part'" >&2
        exit 2
        ;;
esac
mkdir -p "$logs"
status=0
export DITMOE_TEST_GPU_ONLY=1
# cuBLAS for the benchmark baselines: the system's, or the one PyTorch's pip wheels ship
# (site-packages/nvidia/*/lib is not on the loader's path by itself).
nvidia_libs="$(python3 -c 'import glob, os, nvidia; print(":".join(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib"))))' 2> /dev/null || true)"
if [ -n "$nvidia_libs" ]; then
    export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" | tee -a "$logs/summary.txt"

say() { echo "$*" | tee -a "$logs/summary.txt"; }

# Runs one step under a time limit: step SECONDS LOG_NAME COMMAND...; logs to LOG_NAME.log.
step() {
    local limit="$1" name="$2"
    shift 2
    local start=$SECONDS
    if timeout -k 5 "$limit" "$@" > "$logs/$name.log" 2>&1; then
        say "passed: $name ($((SECONDS - start)) s) $(grep -h 'test result' "$logs/$name.log" | tail -1)"
    else
        say "FAILED: $name (exit $?, $((SECONDS - start)) s, see $name.log): $(grep -h -m3 'panicked\|error\|FAILED' "$logs/$name.log" | head -3 | tr '\n' ' ')"
        status=1
    fi
    # cuda:0 must be the GPU; cuda:1 and cuda:2 are the emulator on a one-GPU machine (expected).
    if grep -q "cuda:0 is the PTX emulator\|GPU run skipped (kernels checked" "$logs/$name.log"; then
        say "WARNING: $name did not find the GPU"
        status=1
    fi
}
checks() {
    for test in "$here"/bin/test-*; do
        step 60 "$(basename "$test")" "$test" --nocapture
    done
    step 90 gpu-test-ditmoe_tensor "$here/bin/gpu-test-ditmoe_tensor" --nocapture cuda
    step 90 gpu-test-cuda_step "$here/bin/gpu-test-cuda_step" --nocapture
    step 90 gpu-test-ditmoe_experiments "$here/bin/gpu-test-ditmoe_experiments" --nocapture on_the_gpu

    local sanitizer
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true)"
    if [ -n "$sanitizer" ]; then
        # Every kernel test binary (test-ditmoe_cuda holds the emulator's own unit tests).
        for test in "$here"/bin/test-*; do
            [ "$(basename "$test")" = test-ditmoe_cuda ] && continue
            step 90 "sanitizer-memcheck-$(basename "$test")" "$sanitizer" --tool memcheck \
                --error-exitcode 1 "$test"
        done
        # racecheck is much slower: one test per shared-memory kernel family.
        for name_and_test in gemm:tensor_core_gemm_matches_the_cpu_in_every_layout \
            attention:flash_forward_matches_the_cpu_attention \
            attention:flash_backward_matches_the_cpu_gradients routing: rows_and_norm:; do
            local name="${name_and_test%%:*}" test="${name_and_test#*:}"
            step 90 "sanitizer-racecheck-test-$name${test:+-$test}" "$sanitizer" --tool racecheck \
                --error-exitcode 1 "$here/bin/test-$name" $test
        done
    else
        say "compute-sanitizer not found: sanitizer runs skipped"
    fi

    # End to end: tiny-moe trains on the GPU; the same steps on the CPU give the speed-up.
    step 60 train-cuda "$here/bin/ditmoe" train --config "$here/configs/tiny-moe.toml" --steps 200 \
        --device cuda --out /tmp/ditmoe-train-cuda
    step 60 train-cpu "$here/bin/ditmoe" train --config "$here/configs/tiny-moe.toml" --steps 20 \
        --device cpu --out /tmp/ditmoe-train-cpu
    step 200 ablate-full-smoke "$here/bin/ditmoe" ablate --preset "$here/configs/full-smoke.toml" \
        --device cuda --out /tmp/ditmoe-ablate-full-smoke
    cp /tmp/ditmoe-ablate-full-smoke/report.md "$logs/ablate-full-smoke-report.md" 2> /dev/null ||
        say "the full-smoke ablation wrote no report.md"
}

benchmarks() {
    for bench in "$here"/bin/bench-*; do
        cd /tmp # criterion writes its reports under ./target
        step 150 "$(basename "$bench")" "$bench" --bench --noplot
        cd "$here"
        if grep -q "benchmarks skipped" "$logs/$(basename "$bench").log"; then
            say "FAILED: $(basename "$bench") found no GPU"
            status=1
        fi
    done
    step 200 train-step "$here/train-step.sh" "$here/bin/ditmoe" "$here/configs/step" "$logs/train-step"
    # PyTorch baselines at the same shapes (SDPA attention, cuBLAS through torch.matmul).
    if python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
        step 60 pytorch-baselines python3 "$here/sdpa.py"
    else
        say "PyTorch with CUDA not found: PyTorch baselines skipped"
    fi
    # The RESULTS.md tables (ours vs the baselines of this run, with the target ratios).
    python3 "$here/summarize.py" "$logs" > "$logs/tables.md" 2>> "$logs/summary.txt" &&
        say "tables: tables.md"
}

[ "$part" = benchmarks ] || checks
[ "$part" = checks ] || benchmarks
exit "$status"
RUN
chmod +x "$bundle/run.sh"
du -sh "$bundle"
ls "$bundle/bin"
