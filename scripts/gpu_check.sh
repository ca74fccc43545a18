#!/usr/bin/env bash
# Everything that needs a GPU, on a machine with one NVIDIA GPU, in under 8 minutes:
#   1. builds gts_megatron._C with its CUDA kernels (csrc/cuda) against this Python's CUDA torch;
#   2. runs the `gpu` tests (the kernels against the CPU ops and megatron's permute, the group
#      dispatcher against megatron's alltoall) with GTS_REQUIRE_GPU=1, so none can skip;
#   3. runs `gts bench dispatch` and a short bf16 `gts bench train`;
#   4. writes the figures to RESULTS_DIR (default gpu_check_results/): pytest.log, dispatch.txt,
#      train.json, train.txt and summary.txt.
# Usage: bash scripts/gpu_check.sh [RESULTS_DIR]; PYTHON picks the interpreter (default: python3,
# which must have a CUDA build of torch and the packages of setup.py installed).
# Without a GPU it stops at once with exit 2 and says what it needs; it never skips silently.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS="${1:-gpu_check_results}"

need() { echo "gpu_check: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null || need "no nvidia-smi: this needs a machine with an NVIDIA GPU and its driver"
nvidia-smi -L | grep -q GPU || need "nvidia-smi finds no GPU: this needs one NVIDIA GPU"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' \
    || need "$PYTHON's torch has no CUDA (torch.version.cuda is None or no device): install a CUDA build of torch"
command -v nvcc >/dev/null || [[ -n "${CUDA_HOME:-}" ]] || need "no nvcc and no CUDA_HOME: the CUDA kernels need the CUDA toolkit"

mkdir -p "$RESULTS"
started=$(date +%s)
echo "== build: gts_megatron._C with CUDA kernels"
GTS_BUILD_CUDA=1 "$PYTHON" setup.py -q build_ext --inplace >"$RESULTS/build.log" 2>&1 \
    || { tail -30 "$RESULTS/build.log" >&2; need "the CUDA build failed (log: $RESULTS/build.log)"; }

echo "== gpu tests"
GTS_REQUIRE_GPU=1 "$PYTHON" -m pytest -m gpu tests -p no:cacheprovider -q 2>&1 | tee "$RESULTS/pytest.log"

echo "== gts bench dispatch"
"$PYTHON" -m gts_megatron.cli bench dispatch --device cuda --dtype bf16 | tee "$RESULTS/dispatch.txt"

echo "== gts bench train (bf16, short)"
"$PYTHON" -m gts_megatron.cli bench train --preset small --dtype bf16 --steps 20 --warmup 5 \
    --out "$RESULTS/train.json" | tee "$RESULTS/train.txt"

{
    echo "gpu_check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
    echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
    echo "tests: $(tail -1 "$RESULTS/pytest.log")"
    echo "wall: $(( $(date +%s) - started )) s"
} | tee "$RESULTS/summary.txt"
