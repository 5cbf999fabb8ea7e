"""+recipe=best: the recommended few-labels configuration, what it builds, and its purely supervised
fallback when there are no unlabeled texts."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY, read_jsonl

# TINY without its step count: the recipe counts in epochs. 96 labeled texts in batches of 8 are 12 steps
# an epoch, so 1/3 epoch is 4 steps, and 2 rounds make a teacher of 2 steps, then one student.
BASE = [a for a in TINY if not a.startswith("trainer.max_steps")]
SHORT = ["trainer.epochs=0.3333333333333333", "loss.self_training_rounds=2"]


def test_best_trains_supcon_and_fresh_students_and_nothing_else(sft, tmp_path) -> None:
    ids = tmp_path / "ids.jsonl"
    sft("train", *BASE, "+recipe=best", *SHORT, "run_name=b", check=True,
        env={"SFT_CACHE_DIR": str(tmp_path / "cache"), "SFT_TEST_RECORD_IDS": str(ids)})
    run = tmp_path / "runs" / "b"
    # The teacher's steps draw no unlabeled texts (nothing reads them yet); the student's draw 8 of them.
    drawn = [(r["step"], len(r["ids"])) for r in read_jsonl(ids) if r["stream"] == "unlabeled"]
    assert drawn == [(3, 8), (4, 8)]
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
        proc = sft("train", *BASE, "+recipe=best", *SHORT, override, f"run_name={name}", check=True)
        run = tmp_path / "runs" / name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["objectives"] == ["sup", "supcon"]
        assert summary["strategy"] is None and summary["n_unlabeled"] == 0
        # The first round alone: half the epochs (1/6), the teacher's 2 steps over the 96 labeled texts;
        # over all of train's labels, as many steps as 1/6 of an epoch takes.
        assert summary["epochs"] == pytest.approx(1 / 6)
        assert summary["steps"] == math.ceil(summary["n_labeled"] / 6 / 8)
        assert name == "all" or summary["steps"] == 2
        log = (run / "train.log").read_text()
        assert "no unlabeled texts" in log and "training on the labels alone" in log
        assert proc.returncode == 0
    # A strategy that needs them still says so.
    proc = sft("train", *TINY, "+strategy=mix", "lambda=0.5", "data.max_unlabeled=0")
    assert proc.returncode == 2 and "data.max_unlabeled" in proc.stderr


def test_rounds_of_epochs_are_the_same_run_as_rounds_of_steps(sft, tmp_path) -> None:
    # The recipe's sizing (trainer.epochs split into loss.self_training_rounds) resolves to plain steps and
    # a re-label period: the run is the one those steps would give, to the bit, and config.yaml says so.
    sft("train", *BASE, "+recipe=best", "trainer.epochs=0.5", "loss.self_training_rounds=3", "run_name=rounds",
        check=True)
    sft("train", *BASE, "+recipe=best", "~trainer.epochs", "~loss.self_training_rounds", "trainer.max_steps=6",
        "loss.self_training_every=2", "run_name=steps", check=True)

    def train_metrics(name: str) -> list[dict]:
        return [{k: v for k, v in e.items() if k.startswith(("train/loss", "val/"))}
                for e in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")]

    assert train_metrics("rounds") == train_metrics("steps")
    assert [e["step"] for e in read_jsonl(tmp_path / "runs" / "rounds" / "metrics.jsonl")
            if "train/loss_st" in e] == [3, 4, 5, 6]
    import yaml

    recorded = yaml.safe_load((tmp_path / "runs" / "rounds" / "config.yaml").read_text())
    assert recorded["trainer"]["max_steps"] == 6 and recorded["loss"]["self_training_every"] == 2
    # Rounds without self-training mean nothing: refused, naming the key.
    proc = sft("train", *TINY, "loss.self_training_rounds=2")
    assert proc.returncode == 2 and "loss.self_training_rounds" in proc.stderr
