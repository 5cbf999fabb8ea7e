"""End-to-end runs through the real CLI on model=tiny: run-dir layout, strategies, determinism, eval."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import TINY, read_jsonl, run_dirs
from safetensors.torch import load_file


def test_help_lists_commands_and_groups_without_importing_torch() -> None:
    code = ("import sys, io, contextlib\nfrom sftcli import cli\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    try:\n        cli.main(['--help'])\n"
            "    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\nprint(buf.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for word in ("train", "eval", "predict", "report", "model:", "data:", "strategy:", "mix", "alternate", "tiny"):
        assert word in out


def test_train_help_lists_config_groups(sft) -> None:
    proc = sft("train", "--help")
    assert proc.returncode == 0
    assert "strategy: alternate, mix" in proc.stdout and "model: hf, minilm, tiny" in proc.stdout


def test_unknown_command_suggests(sft) -> None:
    proc = sft("trian")
    assert proc.returncode == 2 and "did you mean 'train'" in proc.stderr


@pytest.mark.parametrize("strategy", [[], ["+strategy=alternate", "lambda=0.5"], ["+strategy=mix", "lambda=0.5"],
                                      ["+strategy=mix", "lambda=0.5", "loss.rampup_steps=3"]])
def test_train_writes_the_run_directory(sft, tmp_path, strategy) -> None:
    proc = sft("train", *TINY, *strategy, check=True)
    (run,) = run_dirs(tmp_path / "runs")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log"):
        assert (run / name).is_file(), name
    events = read_jsonl(run / "metrics.jsonl")
    assert all("step" in e for e in events)
    train = [e for e in events if "train/loss" in e]
    assert [e["step"] for e in train] == [1, 2, 3, 4]
    assert all("train/lr" in e and "perf/samples_per_s" in e for e in train)
    # The total gradient norm before clipping, every window.
    assert all(math.isfinite(e["train/grad_norm"]) and e["train/grad_norm"] > 0 for e in train)
    # train/loss is L_sup + lambda * L_con of the window's one step (log_every=1), with that step's lambda
    # (ramped up: 0.5 x step / 3 over the first 3 steps).
    ramp = 3 if "loss.rampup_steps=3" in strategy else 0
    for e in train:
        lam = 0.5 * min(1.0, e["step"] / ramp) if ramp else 0.5
        if "train/loss_con" in e:
            assert e["train/lambda"] == pytest.approx(lam)
        assert e["train/loss"] == pytest.approx(e.get("train/loss_sup", 0.0) + lam * e.get("train/loss_con", 0.0),
                                                rel=1e-5)
    assert any("val/accuracy" in e and "val/macro_f1" in e for e in events)
    if strategy:
        assert any("train/loss_con" in e for e in train) and any("train/loss_sup" in e for e in train)
    else:
        assert not any("train/loss_con" in e for e in train)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("best_checkpoint", "last_checkpoint", "test/accuracy", "test/macro_f1", "val/accuracy"):
        assert key in summary
    assert summary["last_checkpoint"] == "checkpoints/step-000004"
    best = run / summary["best_checkpoint"]
    assert (best / "manifest.json").is_file() and (best / "model.safetensors").is_file()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(best)
    tok = AutoTokenizer.from_pretrained(best)
    assert model.config.id2label[0] == "ABBR" and model.config.id2label[5] == "NUM"
    assert model(**tok(["What is a dog ?"], return_tensors="pt")).logits.shape == (1, 6)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_same_seed_same_weights_different_seed_different(sft, tmp_path) -> None:
    args = [*TINY, "+strategy=mix", "lambda=0.5"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sft("train", *args, f"seed={seed}", f"run_name={name}", check=True)
    weights = {n: load_file(tmp_path / "runs" / n / "checkpoints" / "step-000004" / "model.safetensors")
               for n in "abc"}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_eval_reproduces_the_runs_test_accuracy(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.max_steps=6", "optim.lr=1e-3", "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    proc = sft("eval", f"checkpoint={run}", "run_name=e", check=True)
    result = json.loads((tmp_path / "runs" / "eval" / "e" / "eval.json").read_text())
    assert result["accuracy"] == summary["test/accuracy"]
    assert result["macro_f1"] == summary["test/macro_f1"]
    assert result["n"] == 520 and set(result["per_class"]) == set(summary["label_names"])
    assert "confusion matrix" in proc.stdout


def test_lambda_without_strategy_is_refused(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "lambda=0.5")
    assert proc.returncode == 2
    assert "lambda" in proc.stderr and "+strategy=mix" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("summary.json"))


def test_multirun_runs_every_job_in_its_own_run_dir(sft, tmp_path) -> None:
    proc = sft("train", "-m", "+strategy=alternate,mix", "lambda=0.1,0.5", *TINY, "trainer.max_steps=2",
               "trainer.eval_every=0", "trainer.save_every=0", timeout=600)
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(tmp_path / "runs" / "sweeps")
    assert len(runs) == 4
    assert all(json.loads((r / "summary.json").read_text())["status"] == "completed" for r in runs)
    strategies = sorted(json.loads((r / "summary.json").read_text())["strategy"] for r in runs)
    assert strategies == ["alternate", "alternate", "mix", "mix"]


@pytest.mark.slow
def test_default_model_and_data_short_run(sft, tmp_path) -> None:
    """The real embedded MiniLM on TREC-6, a short mix run: learns well above chance."""
    sft("train", "+strategy=mix", "lambda=0.5", "trainer.max_steps=40", "trainer.eval_every=20",
        "trainer.save_every=0", "run_name=real", check=True, timeout=900)
    summary = json.loads((tmp_path / "runs" / "real" / "summary.json").read_text())
    assert summary["test/accuracy"] > 0.4  # chance is ~0.2 on 6 classes


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_compiled_forward_trains_like_eager(sft, tmp_path) -> None:
    """trainer.compile=true: the same run, the same losses (to float tolerance). Dropout off: compiled
    dropout draws its masks from another random stream."""
    args = [*TINY, "+strategy=mix", "trainer.eval_every=0", "trainer.save_every=0", "data.labels_per_class=16",
            "model.dropout=0.0"]
    losses = {}
    for flag in ("false", "true"):
        root = tmp_path / flag
        proc = sft("train", *args, f"trainer.compile={flag}", f"run_root={root}", timeout=600, check=True)
        assert ("training forward is compiled" in proc.stdout + proc.stderr) == (flag == "true")
        (run,) = run_dirs(root)
        losses[flag] = [r["train/loss"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
        assert (run / "checkpoints" / "step-000004" / "model.safetensors").is_file()
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
