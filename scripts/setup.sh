#!/usr/bin/env bash
# Creates .venv with torch 2.13 (the CPU build where there is no NVIDIA GPU), deepspeed and this
# package. Idempotent: a no-op (well under a second) when nothing it installs has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin=$candidate; break; fi
  done
fi
if [ -z "$python_bin" ] || ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: gts_megatron needs Python 3.11 (megatron-core 0.16.1); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$python_bin" -m venv .venv 2>/dev/null; then
    # Debian and Ubuntu ship venv separately
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && "$python_bin" -m venv .venv
    else
      echo "error: '$python_bin -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2
      exit 2
    fi
  fi
fi
py=.venv/bin/python

# the stamp covers what the install builds from, so a change to csrc/ rebuilds the extension
stamp=".venv/.gts-setup-$(cat setup.py scripts/setup.sh csrc/*.cpp csrc/*.h csrc/cuda/* | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

echo "setting up .venv (first run: a few minutes)" >&2
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }
# a pip that installs editables by PEP 660, so --no-build-isolation reaches the csrc build (pip 23
# falls back to `setup.py develop`, which re-runs pip in an isolated env without torch)
pip_install --upgrade "pip>=25" setuptools wheel
if ! "$py" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
  else
    # the CPU build, so pip does not fetch several GB of CUDA wheels; from a local wheel
    # directory when pip is configured with one, else from PyTorch's CPU index
    pip_install "torch==2.13.0+cpu" 2>/dev/null ||
      pip_install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
# deepspeed (and our csrc extension) build against the torch above, not an isolated copy of it
DS_BUILD_OPS=0 pip_install --no-build-isolation "deepspeed==0.19.8"
pip_install --no-build-isolation -e ".[dev]"  # also compiles csrc/ (about a minute)
"$py" -c 'import torch, gts_megatron._C' || { echo "error: the csrc extension gts_megatron._C did not build" >&2; exit 2; }
rm -f .venv/.gts-setup-*
touch "$stamp"
echo "set up: $("$py" -W ignore -c 'import torch; from megatron.core import package_info as m; print(f"torch {torch.__version__}, megatron-core {m.__version__}")')" >&2
