"""Evaluation metrics (scikit-learn's): their definitions, ROC AUC on two classes against the saved
predictions, trainer.select_metric picking the best checkpoint by any of them, and `sft eval` showing them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TINY, read_jsonl
from sklearn.metrics import roc_auc_score
from spam import spam_files

from sftcli.config.schema import SELECT_METRICS
from sftcli.evaluate import metrics

# Spam data, balanced class weights, a high lr: the predictions move, so the metrics rank the
# evaluations differently (the precondition each selection test checks first).
SPAM_RUN = [*(o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.eval_every", "trainer.log_every"))),
            "trainer.eval_every=5", "trainer.log_every=10", "trainer.precision=fp32", "model.dropout=0",
            "optim.warmup_ratio=0", "optim.lr=3e-3", "loss.class_weights=balanced"]


def test_metrics_follow_their_definitions() -> None:
    labels, preds = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    out = metrics(labels, preds, ["a", "b", "c", "d"])  # d never occurs
    f1 = {"a": 0.8, "b": 0.5, "c": 2 / 3, "d": 0.0}
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # over the classes that occur
    assert out["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert {k: v["f1"] for k, v in out["per_class"].items()} == pytest.approx(f1)
    assert out["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert out["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert out["n"] == 6 and "roc_auc" not in out
    # Two classes: the share of (positive, negative) pairs the second label's probability ranks right.
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    binary = metrics(np.array([0, 0, 1, 1]), probs.argmax(1), ["neg", "pos"], probs)
    assert binary["roc_auc"] == pytest.approx(3 / 4)
    assert np.isnan(metrics(np.array([1, 1]), np.array([1, 0]), ["neg", "pos"], probs[:2])["roc_auc"])


def test_every_selectable_metric_is_one_evaluation_computes() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    computed = {f"val/{k}" for k, v in metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"], probs).items()
                if isinstance(v, float)}
    assert set(SELECT_METRICS) == computed


def _best_by(events: list[dict], key: str) -> int:
    """The step the engine must pick: the first evaluation with the highest value."""
    evals = [(e["step"], e[key]) for e in events if key in e and e[key] is not None]
    return max(evals, key=lambda s: (s[1], -s[0]))[0]


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_binary_roc_auc_equals_sklearns_on_the_saved_predictions(sft, tmp_path) -> None:
    data = spam_files(tmp_path / "spam")
    sft("train", *SPAM_RUN, *data, "trainer.max_steps=20", "trainer.select_metric=val/roc_auc", "run_name=r",
        check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    events = read_jsonl(run / "metrics.jsonl")
    assert _best_by(events, "val/roc_auc") != _best_by(events, "val/accuracy"), "the setting no longer separates them"
    assert summary["best_step"] == _best_by(events, "val/roc_auc")
    assert summary["select_value"] == max(e["val/roc_auc"] for e in events if "val/roc_auc" in e)
    assert any("final/test/roc_auc" in e for e in events)
    # The test set's ROC AUC is scikit-learn's on what `sft predict` writes for the best checkpoint.
    out = tmp_path / "pred.jsonl"
    sft("predict", f"checkpoint={run}", f"input={tmp_path / 'spam' / 'test.csv'}", f"output={out}", check=True)
    rows = read_jsonl(out)
    with (tmp_path / "spam" / "test.csv").open() as fh:
        truth = [r["label"] for r in csv.DictReader(fh)]
    expected = roc_auc_score([t == "spam" for t in truth], [r["prob_spam"] for r in rows])
    assert 0.5 < summary["test/roc_auc"] < 1  # neither perfect nor chance: pairs ranked both ways
    assert summary["test/roc_auc"] == pytest.approx(expected, abs=1e-9)
    # `sft eval` writes and prints the same figures.
    proc = sft("eval", f"checkpoint={run}", "run_name=e", check=True)
    result = json.loads((tmp_path / "runs" / "eval" / "e" / "eval.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "roc_auc"):
        assert result[key] == summary[f"test/{key}"], key
    assert "ROC AUC" in proc.stdout and "weighted-F1" in proc.stdout
    assert result["per_class"] == summary["test/per_class"]


def test_select_metric_macro_f1_picks_the_best_by_it(sft, tmp_path) -> None:
    sft("train", *SPAM_RUN, *spam_files(tmp_path / "spam"), "trainer.max_steps=60",
        "trainer.select_metric=val/macro_f1", "run_name=m", check=True)
    run = tmp_path / "runs" / "m"
    events = read_jsonl(run / "metrics.jsonl")
    assert _best_by(events, "val/macro_f1") != _best_by(events, "val/accuracy"), "the setting no longer separates them"
    summary = json.loads((run / "summary.json").read_text())
    best = _best_by(events, "val/macro_f1")
    assert summary["best_step"] == best and summary["best_checkpoint"] == f"checkpoints/step-{best:06d}"
    assert summary["val/macro_f1"] == summary["select_value"] == max(e["val/macro_f1"] for e in events
                                                                      if "val/macro_f1" in e)


@pytest.mark.parametrize("args,named", [
    (["trainer.select_metric=val/f1"], ["trainer.select_metric", "val/accuracy", "val/weighted_f1", "val/roc_auc"]),
    (["trainer.select_metric=val/roc_auc"], ["trainer.select_metric=val/roc_auc needs two classes", "6"]),
])
def test_a_metric_that_cannot_be_selected_is_refused(sft, tmp_path, args, named) -> None:
    proc = sft("train", *TINY, *args)
    assert proc.returncode == 2, proc.stderr
    assert all(n in proc.stderr for n in named), proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("metrics.jsonl"))
