"""The same `sft train` command lines under two checkouts, compared: every metric (timings aside), the
summary, config.yaml, and every tensor of every checkpoint (weights, optimizer, streams, objectives' state).
For a change that must not move a result (a redesign): run it with the checkout before and after.

    python benchmarks/same_results.py BEFORE_CHECKOUT AFTER_CHECKOUT OUT_DIR [SCENARIO,...]

Each checkout runs with PYTHONPATH pointing at it, on model=tiny, one thread. Exit 0: all identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.numpy import load_file

TINY = ["model=tiny", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.save_every=2", "trainer.log_every=1",
        "trainer.batch_size=8", "trainer.unlabeled_batch_size=8", "trainer.eval_batch_size=256",
        "data.max_unlabeled=256"]
BEST = [*TINY, "+recipe=best", "trainer.epochs=null", "trainer.max_steps=6"]
# Each scenario: its command lines in order (resume: killed at step 4, then resume=auto).
SCENARIOS: dict[str, list[list[str]]] = {
    "supervised": [TINY],
    "mix_all": [[*TINY, "+strategy=mix", "lambda=0.5", "loss.consistency_weight=0.5", "loss.self_training_weight=0.5",
                 "loss.self_training_every=2", "loss.supcon_weight=0.5", "loss.supcon_unlabeled=true",
                 "loss.unlabeled_mask_prob=0.1", "loss.labeled_mask_prob=0.1", "loss.projection=mlp"]],
    "alternate": [[*TINY, "+strategy=alternate", "lambda=0.5"]],
    "best": [BEST],
    "epochs_rounds": [[*(a for a in TINY if not a.startswith("trainer.max_steps")), "+recipe=best", "trainer.epochs=1",
                       "data.labels_per_class=8"]],
    "resume": [BEST, [*BEST, "resume=auto"]],
}
TIMINGS = ("perf/", "time", "wall", "_s", "seconds", "eta")


def run(checkout: Path, out: Path, name: str) -> Path:
    root = out / checkout.name / name
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "SFT_CACHE_DIR": str(out / checkout.name / "cache")}
    for i, args in enumerate(SCENARIOS[name]):
        kill = {"SFT_TEST_KILL_AT_STEP": "4"} if name == "resume" and i == 0 else {}
        proc = subprocess.run([sys.executable, "-m", "sftcli", "train", *args, f"run_name={name}"], cwd=root,
                              env={**env, **kill}, capture_output=True, text=True)
        if proc.returncode != (-9 if kill else 0):
            raise SystemExit(f"{checkout} {name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return root / "runs" / name


def tensors(run_dir: Path) -> dict[str, str]:
    """A digest of every tensor and value in the run's checkpoints; a recorded config by its values."""
    digests: dict[str, str] = {}

    def walk(x: Any, where: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}/{k}")
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        elif torch.is_tensor(x):
            data = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            digests[where] = hashlib.sha256(data).hexdigest()
        elif where.endswith("/config") and isinstance(x, str):
            digests[where] = json.dumps(json.loads(x), sort_keys=True)
        else:
            digests[where] = repr(x)

    for f in sorted(run_dir.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            digests[f"{f.relative_to(run_dir)}:{k}"] = hashlib.sha256(v.tobytes()).hexdigest()
    for f in sorted(run_dir.rglob("*.pt")):
        walk(torch.load(f, weights_only=False, map_location="cpu"), str(f.relative_to(run_dir)))
    return digests


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if not any(t in k for t in TIMINGS)} for e in rows]


def summary(run_dir: Path) -> dict[str, Any]:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if not any(t in k for t in TIMINGS)}


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def main() -> int:
    before, after, out = (Path(p).resolve() for p in sys.argv[1:4])
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(SCENARIOS)
    same = True
    for name in names:
        a, b = run(before, out, name), run(after, out, name)
        checks = {
            "metrics.jsonl": metrics(a) == metrics(b),
            "summary.json": not differing(summary(a), summary(b)),
            "config.yaml": yaml.safe_load((a / "config.yaml").read_text())
            == yaml.safe_load((b / "config.yaml").read_text()),
            "checkpoints": not differing(tensors(a), tensors(b)),
        }
        print(f"{name}: " + ", ".join(f"{what} {'identical' if ok else 'DIFFERS'}" for what, ok in checks.items()))
        if not checks["checkpoints"]:
            print(f"  differing in checkpoints: {differing(tensors(a), tensors(b))[:5]}")
        if not checks["summary.json"]:
            print(f"  differing in summary.json: {differing(summary(a), summary(b))}")
        same &= all(checks.values())
    print("all identical" if same else "differences found")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
