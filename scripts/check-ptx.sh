#!/usr/bin/env bash
# Assembles every PTX module of ditmoe-cuda — exactly as the runtime loads it, templates
# expanded (the ptx-dump binary) — with NVIDIA's ptxas for sm_80 (A100) and sm_90 (H100).
# Fails on any assembler error or warning and on any register spill; prints the registers,
# static shared memory and spills of every kernel.
#
# ptxas comes from the PyPI wheel nvidia-cuda-nvcc (no CUDA toolkit needed), downloaded once
# into ~/.cache/ditmoe. Set PTXAS=/path/to/ptxas to use another one.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${PTXAS_WHEEL_VERSION:-13.5.37}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ditmoe/ptxas-$version"
ptxas="${PTXAS:-$cache/ptxas}"
if [ ! -x "$ptxas" ]; then
    echo "fetching ptxas from the nvidia-cuda-nvcc==$version wheel into $cache"
    mkdir -p "$cache"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        "nvidia-cuda-nvcc==$version" -d "$cache"
    python3 - "$cache" <<'PY'
import glob, os, sys, zipfile
cache = sys.argv[1]
wheel = glob.glob(os.path.join(cache, "nvidia_cuda_nvcc-*.whl"))[0]
with zipfile.ZipFile(wheel) as archive:
    member = next(n for n in archive.namelist() if n.endswith("/bin/ptxas"))
    with archive.open(member) as src, open(os.path.join(cache, "ptxas"), "wb") as dst:
        dst.write(src.read())
os.chmod(os.path.join(cache, "ptxas"), 0o755)
os.remove(wheel)
PY
fi
"$ptxas" --version | tail -1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo run --quiet --release -p ditmoe-cuda --bin ptx-dump -- "$work/ptx" > /dev/null

failed=0
printf '%-12s %-28s %-6s %5s %10s %7s\n' module kernel arch regs smem_bytes spills
for ptx in "$work"/ptx/*.ptx; do
    module="$(basename "$ptx" .ptx)"
    for arch in sm_80 sm_90; do
        if ! log="$("$ptxas" -arch="$arch" -v --warn-on-spills "$ptx" -o "$work/out.cubin" 2>&1)"; then
            echo "$log"
            echo "FAILED: $module for $arch does not assemble"
            failed=1
            continue
        fi
        if echo "$log" | grep -qi "warning"; then
            echo "$log" | grep -i "warning"
            echo "FAILED: ptxas warned on $module for $arch"
            failed=1
        fi
        # One line per kernel: name, registers, static shared memory, spilled bytes.
        report="$(echo "$log" | awk -v module="$module" -v arch="$arch" '
            /Compiling entry function/ { match($0, /'\''[^'\'']*'\''/); kernel = substr($0, RSTART + 1, RLENGTH - 2) }
            /spill stores/ { spills = $5 + $9 }
            /Used [0-9]+ registers/ {
                regs = $5; smem = 0
                if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH) + 0 }
                printf "%-12s %-28s %-6s %5d %10d %7d\n", module, kernel, arch, regs, smem, spills
            }')"
        echo "$report"
        if echo "$report" | awk '$6 > 0 { found = 1 } END { exit !found }'; then
            echo "FAILED: register spills in $module for $arch"
            failed=1
        fi
    done
done
if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "ptxas: every kernel assembles for sm_80 and sm_90 with no spills"
