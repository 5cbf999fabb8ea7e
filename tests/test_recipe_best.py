"""+recipe=best: the recommended few-labels configuration, what it builds, and its purely supervised
fallback when there are no unlabeled texts."""

from __future__ import annotations

import json

from conftest import TINY, read_jsonl

# The recipe's rounds shortened to fit TINY's 4 steps: a teacher of 2 steps, then one student.
SHORT = ["loss.self_training_every=2"]


def test_best_trains_supcon_and_fresh_students_and_nothing_else(sft, tmp_path) -> None:
    sft("train", *TINY, "+recipe=best", *SHORT, "run_name=b", check=True,
        env={"SFT_CACHE_DIR": str(tmp_path / "cache")})
    run = tmp_path / "runs" / "b"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objectives"] == ["sup", "supcon", "st"]
    events = read_jsonl(run / "metrics.jsonl")
    steps = [e for e in events if "train/loss" in e]
    assert all("train/loss_supcon" in e for e in steps)
    assert [e["step"] for e in steps if "train/loss_st" in e] == [3, 4]  # the student round
    # lambda=0: the seed's term is not built, so no frozen-encoder cache is made.
    assert not any("train/loss_con" in e for e in events)
    assert not (tmp_path / "cache" / "teacher").exists()


def test_best_without_unlabeled_texts_trains_the_labels_alone(sft, tmp_path) -> None:
    for name, override in (("none", "data.max_unlabeled=0"), ("all", "data.labels_per_class=null")):
        proc = sft("train", *TINY, "+recipe=best", *SHORT, override, f"run_name={name}", check=True)
        run = tmp_path / "runs" / name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["objectives"] == ["sup", "supcon"]
        assert summary["strategy"] is None and summary["n_unlabeled"] == 0
        # The first round alone: the teacher's 2 steps.
        assert summary["steps"] == 2
        log = (run / "train.log").read_text()
        assert "no unlabeled texts" in log and "training on the labels alone" in log
        assert proc.returncode == 0
    # A strategy that needs them still says so.
    proc = sft("train", *TINY, "+strategy=mix", "lambda=0.5", "data.max_unlabeled=0")
    assert proc.returncode == 2 and "data.max_unlabeled" in proc.stderr
