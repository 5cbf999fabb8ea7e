"""trainer.early_stopping_patience: Hugging Face's rule, the stop through the real CLI (and what a stopped run
still writes), exact resume across a kill, and the refusal without evaluations."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from conftest import TINY, read_jsonl
from safetensors.torch import load_file

from sftcli.engine.early_stopping import EarlyStopping

# One epoch over the 96 labeled texts at batch 8 is 12 steps, evaluated every 2. With threshold 1.0 no
# evaluation can beat the best by more than 1 (every metric lies in [0, 1]), so after the first one the
# counter rises at each: patience 2 stops at step 6, whatever the model learns.
ES = [*(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.save_every"))), "trainer.epochs=1",
      "trainer.save_every=2", "trainer.keep_last=10", "trainer.early_stopping_patience=2",
      "trainer.early_stopping_threshold=1.0"]


@pytest.mark.parametrize("threshold", [0.0, 0.07])
def test_the_counter_follows_hugging_faces_early_stopping_callback(threshold: float) -> None:
    from transformers import EarlyStoppingCallback

    values = [0.5, 0.5, 0.6, 0.65, 0.64, math.nan, 0.9, 0.9, 0.95]
    hf = EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=threshold)
    args, state = SimpleNamespace(greater_is_better=True), SimpleNamespace(best_metric=None)
    ours, best = EarlyStopping(3, threshold), None
    for value in values:
        hf.check_metric_value(args, state, None, value)
        ours.update(value, best)
        assert ours.counter == hf.early_stopping_patience_counter, value
        # Both keep the best as the Trainer does after on_evaluate: strictly greater, never NaN.
        if state.best_metric is None or value > state.best_metric:
            state.best_metric = value
        if math.isfinite(value) and (best is None or value > best):
            best = value
    assert ours.counter == (0 if threshold == 0.0 else 2)  # 0.95 beats 0.9 by 0.05


def test_a_run_stops_early_and_still_ends_as_a_run_does(sft, tmp_path) -> None:
    proc = sft("train", *ES, "run_name=es", check=True)
    run = tmp_path / "runs" / "es"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["stopped_early"] is True and summary["stopped_at_step"] == 6
    assert summary["steps"] == 6 and summary["max_steps"] == 12
    assert summary["early_stopping"] == {"patience": 2, "threshold": 1.0, "counter": 2}
    # The stop's checkpoint is the last one; the best one was tested and exported.
    assert summary["last_checkpoint"] == "checkpoints/step-000006"
    assert summary["best_checkpoint"] in ("checkpoints/step-000002", "checkpoints/step-000004",
                                          "checkpoints/step-000006")
    assert {"test/accuracy", "test/macro_f1", "test/weighted_f1", "val/weighted_f1"} <= set(summary)
    assert "test/roc_auc" not in summary  # six classes
    assert (run / "model" / "model.safetensors").is_file()
    events = read_jsonl(run / "metrics.jsonl")
    assert [e["step"] for e in events if "train/loss" in e] == list(range(1, 7))
    assert [(e["step"], e["early_stopping/counter"]) for e in events if "early_stopping/counter" in e] == \
        [(2, 0), (4, 1), (6, 2)]
    assert any(k.startswith("final/test/") for e in events for k in e)
    assert "early stopping at step 6" in proc.stderr


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_kill_then_resume_stops_where_the_uninterrupted_run_does(sft, tmp_path) -> None:
    sft("train", *ES, "run_name=ref", check=True)
    killed = sft("train", *ES, "run_name=k", env={"SFT_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode == -9
    # The checkpoint of step 4 holds a counter of 1; a resume that lost it would stop at step 8.
    resumed = sft("train", *ES, "run_name=k", "resume=auto", check=True)
    assert "resumed from" in resumed.stderr
    ref, run = tmp_path / "runs" / "ref", tmp_path / "runs" / "k"
    a, b = (load_file(r / "checkpoints" / "step-000006" / "model.safetensors") for r in (ref, run))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    s_ref, s_run = (json.loads((r / "summary.json").read_text()) for r in (ref, run))
    for key in ("stopped_at_step", "early_stopping", "best_checkpoint", "select_value", "test/accuracy"):
        assert s_run[key] == s_ref[key], key
    # Resuming the stopped run again trains no further: it has stopped.
    again = sft("train", *ES, "run_name=k", "resume=auto", check=True)
    assert "resumed from" in again.stderr
    assert max(e["step"] for e in read_jsonl(run / "metrics.jsonl")) == 6
    assert json.loads((run / "summary.json").read_text())["stopped_at_step"] == 6


def test_a_fresh_student_starts_with_its_own_patience(sft, tmp_path) -> None:
    # Fresh students start at steps 4 and 8 (after those steps' evaluations). Each evaluation after the
    # first counts as no improvement, so patience 3 would stop at step 8 if the counter ran on across the
    # restarts; reset at each, it never reaches 3 and all 12 steps run.
    fresh = ["+strategy=mix", "lambda=0", "loss.self_training_weight=1", "loss.self_training_every=4",
             "loss.self_training_student=fresh", "trainer.early_stopping_patience=3"]
    sft("train", *ES, *fresh, "run_name=fresh", check=True)
    run = tmp_path / "runs" / "fresh"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is False and summary["steps"] == 12
    counters = [e["early_stopping/counter"] for e in read_jsonl(run / "metrics.jsonl") if "early_stopping/counter" in e]
    assert counters == [0, 1, 1, 2, 1, 2]


def test_early_stopping_without_evaluations_is_refused(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "trainer.early_stopping_patience=2", "trainer.eval_every=0")
    assert proc.returncode == 2, proc.stderr
    assert "trainer.early_stopping_patience" in proc.stderr and "trainer.eval_every" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("metrics.jsonl"))
