#!/usr/bin/env bash
# One short check of a CUDA machine: device facts, then sft on 1 and (where there are 2+ GPUs) 2 processes
# in bf16 and fp16, printing each run's speed and accuracy. Usage: bash scripts/gpu_check.sh [VENV_DIR]
# Needs the environment from scripts/setup.sh (on a CUDA machine it installs the CUDA build of torch).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="$VENV/bin/python"
OUT="${OUT:-/tmp/sft-gpu-check}"
rm -rf "$OUT" && mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || { echo "no NVIDIA GPU visible"; exit 1; }
"$PY" - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, devices {torch.cuda.device_count()}, "
      f"bf16 {torch.cuda.is_bf16_supported()}, nccl {torch.distributed.is_nccl_available()}")
PY
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
run() {  # name, overrides...
  local name=$1; shift
  local t0=$(date +%s)
  "$PY" -m sftcli train run_root="$OUT" run_name="$name" trainer.max_steps=150 trainer.progress=plain "$@" \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  "$PY" - "$OUT/$name" "$rc" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
from pathlib import Path
run, rc, secs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
speed = [e["perf/samples_per_s"] for e in events if "perf/samples_per_s" in e][1:]
summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
med = sorted(speed)[len(speed) // 2] if speed else float("nan")
print(f"{run.name:<22} exit {rc:>3}  wall {secs:>4}s  samples/s {med:8.1f}  test/accuracy {summary.get('test/accuracy')}")
PY
}
run minilm-1gpu-fp32 +strategy=mix trainer.precision=fp32
run minilm-1gpu-bf16 +strategy=mix trainer.precision=bf16
run minilm-1gpu-fp16 +strategy=mix trainer.precision=fp16
if [ "$NGPU" -ge 2 ]; then
  run minilm-2gpu-bf16 +strategy=mix trainer.precision=bf16 trainer.nproc=2
fi
echo "logs and run dirs: $OUT"
