"""trainer.epochs: passes over the labeled set instead of trainer.max_steps; the steps it resolves to, where
they are recorded, the lr schedule over them, and the refusals (both keys given, rounds that never come)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY, read_jsonl

from sftcli.config import LossConfig, StrategyConfig, TrainConfig, TrainerConfig
from sftcli.engine.build import training_plan

NO_STEPS = [o for o in TINY if not o.startswith("trainer.max_steps")]  # TINY: batch 8, 96 labeled texts


@pytest.mark.parametrize("epochs,n,batch,strategy,steps", [
    (1.0, 96, 8, None, 12),
    (1.5, 96, 8, None, 18),
    (0.3, 10, 4, None, 1),  # 0.75 of a batch: the batch that completes it
    (0.1, 30, 3, None, 1),  # exactly one batch (in floats 0.1 x 30 / 3 rounds up to 2)
    (2.0, 10, 4, None, 5),  # the stream runs on across epochs: 20 texts are 5 full batches
    (0.25, 96, 8, StrategyConfig(name="mix"), 3),
    (0.25, 96, 8, StrategyConfig(name="alternate"), 5),  # 3 labeled steps, 2 unlabeled between them
    (0.25, 96, 8, StrategyConfig(name="alternate", labeled_steps=2), 4),
])
def test_epochs_resolve_to_the_labeled_batches_they_take(epochs, n, batch, strategy, steps) -> None:
    loss = LossConfig(weight=0.5, tau=0.1) if strategy else LossConfig()
    cfg = TrainConfig(trainer=TrainerConfig(epochs=epochs, batch_size=batch), strategy=strategy, loss=loss)
    assert training_plan(cfg, n).max_steps == steps
    assert training_plan(TrainConfig(trainer=TrainerConfig(max_steps=7)), n).max_steps == 7  # without epochs


def test_epochs_set_the_steps_and_the_lr_schedule(sft, tmp_path) -> None:
    proc = sft("train", *NO_STEPS, "trainer.epochs=0.5", "optim.warmup_ratio=0.5", "optim.lr=1e-3", "run_name=e",
               check=True)
    run = tmp_path / "runs" / "e"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == summary["max_steps"] == 6 and summary["epochs"] == 0.5
    # config.yaml records the resolved steps (written before training, once the labeled set is known).
    recorded = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert recorded["max_steps"] == 6 and recorded["epochs"] == 0.5
    assert "trainer.epochs=0.5: 6 steps" in proc.stderr
    # Warmup over half of the 6 steps, then linear decay to 0 at step 6 (150 steps would still be warming up).
    lrs = [e["train/lr"] for e in read_jsonl(run / "metrics.jsonl") if "train/lr" in e]
    assert lrs == pytest.approx([1e-3 * f for f in (1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3)])
    assert [e["train/epoch_labeled"] for e in read_jsonl(run / "metrics.jsonl") if "train/lr" in e][-1] == 0.5


def test_epochs_count_the_labeled_steps_of_alternate(sft, tmp_path) -> None:
    sft("train", *NO_STEPS, "+strategy=alternate", "lambda=0.5", "trainer.epochs=0.25", "run_name=a", check=True)
    events = read_jsonl(tmp_path / "runs" / "a" / "metrics.jsonl")
    steps = [e for e in events if "train/loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in steps if "train/loss_sup" in e] == [1, 3, 5]


@pytest.mark.parametrize("args", [["trainer.epochs=2", "trainer.max_steps=10"],
                                  ["trainer.epochs=2", "trainer.max_steps=150"],  # given, though the default
                                  ["-m", "trainer.epochs=2", "trainer.max_steps=10,20"]])  # each sweep job
def test_epochs_and_max_steps_together_are_refused(sft, tmp_path, args) -> None:
    sweep = args[:1] == ["-m"]  # Hydra's flag goes first
    proc = sft("train", *args[:1], *NO_STEPS, *args[1:], timeout=300) if sweep else sft("train", *NO_STEPS, *args)
    assert proc.returncode == 2, proc.stderr
    assert "trainer.epochs" in proc.stderr and "trainer.max_steps" in proc.stderr and "both given" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("metrics.jsonl"))


def test_self_training_rounds_are_checked_against_the_steps_of_epochs(sft, tmp_path) -> None:
    # The recipe's trainer.max_steps=750 is not the command line's: trainer.epochs decides, and its 12 steps
    # hold no round of 150.
    proc = sft("train", *NO_STEPS, "+recipe=self_training", "trainer.epochs=1")
    assert proc.returncode == 2, proc.stderr
    assert "loss.self_training_every: 150 >= the 12 steps of trainer.epochs=1" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("metrics.jsonl"))
