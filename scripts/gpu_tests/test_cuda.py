"""sft on a CUDA device: the checks the CPU suite (tests/) cannot make. Run by scripts/gpu_check.sh, not by
the default `pytest` (whose testpaths are tests/): `python -m pytest -q scripts/gpu_tests`.

model=tiny on a small generated file data set (data=files), so that they need neither the embedded
MiniLM nor TREC-6 packages: every precision on CUDA, the contrastive path, SIGTERM then an exact resume,
and on a machine with two GPUs a 2-process NCCL run against one process.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

if not torch.cuda.is_available():
    pytest.exit("scripts/gpu_tests need a CUDA device", returncode=1)

CLASSES = ["alpha", "beta", "gamma", "delta"]
STEPS = 8
ARGS = ["model=tiny", "trainer.device=cuda", f"trainer.max_steps={STEPS}", "trainer.eval_every=4", "trainer.save_every=2",
        "trainer.log_every=1", "trainer.batch_size=8", "trainer.unlabeled_batch_size=8", "data.labels_per_class=8"]


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> list[str]:
    """A small labeled set whose classes differ by their words (learnable in a few steps)."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    words = {c: [f"{c}{i}" for i in range(12)] for c in CLASSES}
    paths = {}
    for split, n in (("train", 160), ("validation", 48), ("test", 48)):
        paths[split] = root / f"{split}.csv"
        with paths[split].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in range(n):
                label = CLASSES[i % len(CLASSES)]
                writer.writerow([" ".join(rng.choice(words[label]) for _ in range(rng.randint(4, 20))), label])
    return ["data=files", *(f"data.{split}={path}" for split, path in paths.items())]


def sft(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "SFT_CACHE_DIR": str(cwd / "cache"), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sftcli", "train", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)


def losses(run: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["train/loss"]) for e in events if "train/loss" in e]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_on_cuda(tmp_path, data, precision) -> None:
    proc = sft(tmp_path, *ARGS, *data, f"trainer.precision={precision}", "run_name=p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "p"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["precision"] == precision
    assert "device cuda" in (run / "train.log").read_text()
    assert all(isinstance(v, float) and v == v for _, v in losses(run))  # finite losses every step


def test_the_contrastive_path_on_cuda(tmp_path, data) -> None:
    proc = sft(tmp_path, *ARGS, *data, "+strategy=mix", "lambda=0.5", "trainer.precision=bf16", "run_name=m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "runs" / "m" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss_con" in e for e in events)


def test_sigterm_then_resume_is_exact_on_cuda(tmp_path, data) -> None:
    args = [*ARGS, *data, "+strategy=mix", "lambda=0.5", "trainer.precision=bf16"]
    assert sft(tmp_path, *args, "run_name=ref").returncode == 0
    first = sft(tmp_path, *args, "run_name=r", env={"SFT_TEST_SIGNAL_AT_STEP": "5"})
    assert first.returncode == 75, first.stderr[-3000:]
    second = sft(tmp_path, *args, "run_name=r", "resume=auto")
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = final_weights(tmp_path / "runs" / "r"), final_weights(tmp_path / "runs" / "ref")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"not bit-identical after resume on CUDA: {differing[:5]}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="one GPU: the 2-process NCCL run needs two")
def test_two_gpus_match_one(tmp_path, data) -> None:
    args = [*ARGS, *data, "+strategy=mix", "lambda=0.5", "model.dropout=0", "trainer.precision=fp32"]
    for n in (1, 2):
        proc = sft(tmp_path, *args, f"trainer.nproc={n}", f"run_name=n{n}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (losses(tmp_path / "runs" / f"n{n}") for n in (1, 2))
    diff = max(abs(x - y) for (_, x), (_, y) in zip(one, two, strict=True))
    print(f"max |loss(1 GPU) - loss(2 GPUs, NCCL)| = {diff:.2e}")
    assert diff < 1e-3  # TF32 and NCCL's reduction order allow more than gloo's 1e-4 on CPU
