#!/usr/bin/env bash
# A separate environment with Hugging Face Optimum's onnxruntime models, to load an `sft export` directory
# as a serving stack would, without sft. Separate because optimum-onnx 0.1.0 (the release on the package
# index) needs transformers < 4.58, and sft needs transformers 5. torch first (scripts/venv_torch.sh), as setup.sh.
# Usage: bash scripts/setup_optimum.sh [VENV_DIR]   (default .venv-optimum)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-optimum}"
PYTHON="${PYTHON:-python3}"
. scripts/venv_torch.sh
venv_with_torch "$VENV" "$PYTHON"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "optimum-onnx[onnxruntime]==0.1.0"
"$VENV/bin/python" -c "import optimum.onnxruntime, transformers; print('optimum environment ready:', transformers.__version__)"
