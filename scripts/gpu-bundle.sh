#!/usr/bin/env bash
# Builds, here, everything the GPU check runs — the CUDA test binaries and the GPU benchmark
# binary — and puts them with run.sh into one folder (default: gpu-bundle/) to copy to a
# machine with an NVIDIA GPU, its driver and compute-sanitizer. Nothing is compiled there.
#
#   scripts/gpu-bundle.sh [FOLDER]
#   FOLDER/run.sh [LOG_FOLDER]      # on the GPU machine
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
cp benches/gpu/sdpa.py "$bundle/"

cat > "$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU check: every CUDA test, compute-sanitizer (memcheck and racecheck) on the GEMM test,
# a short tiny-moe training run on the GPU and on the CPU, then the benchmarks. Logs go to LOG_FOLDER (default: $OUT/gpu-logs, or ./gpu-logs).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
logs="${1:-${OUT:-$here}/gpu-logs}"
mkdir -p "$logs"
status=0
# cuBLAS for the benchmark baselines: the system's, or the one PyTorch's pip wheels ship
# (site-packages/nvidia/*/lib is not on the loader's path by itself).
nvidia_libs="$(python3 -c 'import glob, os, nvidia; print(":".join(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib"))))' 2> /dev/null || true)"
if [ -n "$nvidia_libs" ]; then
    export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" | tee -a "$logs/summary.txt"

# Runs one test binary (with an optional name filter), logging to <name>.log.
run_test() {
    local name="$1"
    shift
    # --nocapture keeps each test's "GPU run skipped" line, if any, in the log.
    if "$here/bin/$name" --nocapture "$@" > "$logs/$name.log" 2>&1; then
        echo "passed: $name $(grep -h 'test result' "$logs/$name.log" | tail -1)" | tee -a "$logs/summary.txt"
    else
        echo "FAILED: $name (see $name.log)" | tee -a "$logs/summary.txt"
        status=1
    fi
    if grep -q "GPU run skipped" "$logs/$name.log"; then
        echo "WARNING: $name did not find the GPU" | tee -a "$logs/summary.txt"
        status=1
    fi
}
for test in "$here"/bin/test-*; do
    run_test "$(basename "$test")"
done
run_test gpu-test-ditmoe_tensor cuda
run_test gpu-test-cuda_step
run_test gpu-test-ditmoe_experiments training_on_the_gpu

sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$sanitizer" ]; then
    for tool in memcheck racecheck; do
        if "$sanitizer" --tool "$tool" --error-exitcode 1 "$here/bin/test-gemm" \
            tensor_core_gemm_matches_the_cpu_in_every_layout > "$logs/sanitizer-$tool.log" 2>&1; then
            echo "passed: compute-sanitizer $tool on the GEMM test" | tee -a "$logs/summary.txt"
        else
            echo "FAILED: compute-sanitizer $tool (see sanitizer-$tool.log)" | tee -a "$logs/summary.txt"
            status=1
        fi
    done
else
    echo "compute-sanitizer not found: sanitizer runs skipped" | tee -a "$logs/summary.txt"
fi

# End to end: tiny-moe trains on the GPU; the same steps on the CPU give the speed-up.
for device in cuda cpu; do
    steps=200
    [ "$device" = cpu ] && steps=20
    if "$here/bin/ditmoe" train --config "$here/configs/tiny-moe.toml" --steps "$steps" \
        --device "$device" --out "$logs/train-$device" > "$logs/train-$device.log" 2>&1; then
        echo "passed: ditmoe train --device $device ($(tail -1 "$logs/train-$device.log"))" | tee -a "$logs/summary.txt"
    else
        echo "FAILED: ditmoe train --device $device (see train-$device.log)" | tee -a "$logs/summary.txt"
        status=1
    fi
done

for bench in "$here"/bin/bench-*; do
    name="$(basename "$bench")"
    (cd "$logs" && "$bench" --bench --noplot) > "$logs/$name.log" 2>&1 || status=1
    if grep -q "benchmarks skipped" "$logs/$name.log"; then
        echo "FAILED: $name found no GPU" | tee -a "$logs/summary.txt"
        status=1
    else
        echo "ran: $name (see $name.log)" | tee -a "$logs/summary.txt"
    fi
done
# PyTorch baselines at the same shapes (SDPA attention, cuBLAS through torch.matmul).
if python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
    python3 "$here/sdpa.py" > "$logs/pytorch-baselines.log" 2>&1 || status=1
    echo "ran: PyTorch baselines (see pytorch-baselines.log)" | tee -a "$logs/summary.txt"
else
    echo "PyTorch with CUDA not found: PyTorch baselines skipped" | tee -a "$logs/summary.txt"
fi
exit "$status"
RUN
chmod +x "$bundle/run.sh"
du -sh "$bundle"
ls "$bundle/bin"
