# Sourced (from the repository root) by benches/cpu-step.sh and benches/gemm-vs-torch.sh:
# installs PyTorch from PyPI into benches/torch/.venv when it is missing and sets `venv` and
# `py` (its python).
#
# Tried first, as it would avoid ~5 GB of CUDA libraries we never use: `pip install --no-deps
# torch` plus its pure-Python dependencies. It does NOT work: the Linux torch wheel on PyPI is
# the CUDA build, and `import torch` fails without them ("OSError: libcudart.so.13: cannot open
# shared object file", then "libcublasLt.so.*[0-9] not found") even with no GPU. So this is a
# plain `pip install torch` with its dependencies (the CUDA libraries are installed, never
# loaded onto a GPU: everything runs on the CPU). Python >= 3.11 for tomllib.
venv=benches/torch/.venv
py="$venv/bin/python"
if ! "$py" -c 'import torch, numpy, safetensors' 2>/dev/null; then
    python=""
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python="$candidate"
            break
        fi
    done
    if [ -z "$python" ]; then
        echo "benches: PyTorch needs Python >= 3.11 (for tomllib)" >&2
        exit 2
    fi
    echo "benches: installing PyTorch into $venv (once; about 5 GB with its CUDA libraries)"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "${TORCH_SPEC:-torch==2.15.0}" numpy safetensors
fi
