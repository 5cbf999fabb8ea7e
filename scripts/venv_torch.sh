# Sourced by setup.sh and setup_optimum.sh: venv_with_torch VENV PYTHON creates the virtual environment VENV
# (with PYTHON) if it is missing and installs torch in it before anything that depends on it: an unpinned
# torch would pull a multi-GB CUDA build, so on a machine without CUDA the CPU wheel goes in first.
venv_with_torch() {
  local venv="$1" python="$2"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      "${pip[@]}" install "torch==2.13.0"
    else
      "${pip[@]}" install "torch==2.13.0" || "${pip[@]}" install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
}
