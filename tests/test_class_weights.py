"""loss.class_weights: scikit-learn's balanced weights or one per label name, in the supervised cross-entropy;
the weighted mean over the global batch under DDP; unknown or missing label names refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, read_jsonl
from sklearn.utils.class_weight import compute_class_weight
from spam import COUNTS, spam_files

from sftcli.errors import ConfigError
from sftcli.losses import supervised_loss
from sftcli.objectives.supervised import class_weights

ONE_STEP = [*(o for o in TINY if not o.startswith("trainer.max_steps")), "trainer.max_steps=1",
            "trainer.precision=fp32"]


def test_the_weighted_loss_is_torchs_and_ranks_shares_add_up_to_it() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0])
    weight = torch.tensor([0.5, 2.0, 3.0])
    total = float(weight[labels].sum())
    full = supervised_loss(logits, labels, weight, total)
    torch.testing.assert_close(full, F.cross_entropy(logits, labels, weight=weight))
    (grad_full,) = torch.autograd.grad(full, logits)
    # Two ranks of 4 rows with unequal weight sums: the objective's world-size-scaled shares, averaged by
    # DDP, give the one-process loss and gradient (a per-rank weighted mean would not).
    shares = [supervised_loss(logits[r * 4:(r + 1) * 4], labels[r * 4:(r + 1) * 4], weight, total) * 2
              for r in range(2)]
    torch.testing.assert_close(sum(shares) / 2, full)
    (grad_shares,) = torch.autograd.grad(sum(shares) / 2, logits)
    torch.testing.assert_close(grad_shares, grad_full)
    local_means = [F.cross_entropy(logits[r * 4:(r + 1) * 4], labels[r * 4:(r + 1) * 4], weight=weight)
                   for r in range(2)]
    assert abs(float((sum(local_means) / 2 - full).detach())) > 1e-3


def test_class_weights_from_the_config() -> None:
    names, labels = ["ham", "spam", "eggs"], np.array([0, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(class_weights("balanced", names, labels),
                                  compute_class_weight("balanced", classes=np.arange(3), y=labels))
    np.testing.assert_array_equal(class_weights({"spam": 3, "eggs": 2, "ham": 1}, names, labels), [1.0, 3.0, 2.0])
    assert class_weights(None, names, labels) is None
    with pytest.raises(ConfigError, match=r"loss.class_weights: unknown label 'spma'; no weight for label 'spam'"):
        class_weights({"ham": 1, "spma": 3, "eggs": 1}, names, labels)


def test_balanced_weights_are_sklearns_are_logged_and_change_the_loss(sft, tmp_path) -> None:
    data = spam_files(tmp_path / "spam")
    losses, logs = {}, {}
    for name, extra in (("none", []), ("balanced", ["loss.class_weights=balanced"]),
                        ("equal", ["loss.class_weights={ham:2,spam:2}"])):
        proc = sft("train", *ONE_STEP, *data, *extra, f"run_name={name}", check=True)
        (event,) = [e for e in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl") if "train/loss_sup" in e]
        losses[name], logs[name] = event["train/loss_sup"], proc.stderr
    n_ham, n_spam = COUNTS["train"]
    expected = compute_class_weight("balanced", classes=np.array(["ham", "spam"]),
                                    y=np.array(["ham"] * n_ham + ["spam"] * n_spam))
    expected = dict(zip(["ham", "spam"], expected, strict=True))
    (line,) = [x for x in logs["balanced"].splitlines() if x.startswith("loss: class weights (balanced):")]
    logged = dict(re.findall(r"(\w+)=([\d.e+-]+)", line))
    assert {k: float(v) for k, v in logged.items()} == pytest.approx(expected, rel=1e-6)
    summary = json.loads((tmp_path / "runs" / "balanced" / "summary.json").read_text())
    assert summary["class_weights"] == pytest.approx(expected)
    assert "class weights" not in logs["none"] and "class_weights" not in json.loads(
        (tmp_path / "runs" / "none" / "summary.json").read_text())
    # Same data, initialisation and batch: the weights alone move the loss; equal weights are the plain mean.
    assert abs(losses["balanced"] - losses["none"]) > 1e-4
    assert losses["equal"] == pytest.approx(losses["none"], rel=1e-6)


@pytest.mark.parametrize("weights,named", [("{ham:1,spma:3}", ["unknown label 'spma'", "no weight for label 'spam'"]),
                                           ("{ham:1}", ["no weight for label 'spam'"])])
def test_label_names_must_be_the_datas(sft, tmp_path, weights, named) -> None:
    proc = sft("train", *ONE_STEP, *spam_files(tmp_path / "spam"), f"loss.class_weights={weights}")
    assert proc.returncode == 2, proc.stderr
    assert "loss.class_weights" in proc.stderr and all(n in proc.stderr for n in named)
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("metrics.jsonl"))


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_two_processes_weigh_and_stop_as_one(sft, tmp_path) -> None:
    """nproc=2: the class-weighted loss is the global batch's weighted mean, and early stopping stops both
    ranks at the step one process stops at."""
    args = [*(o for o in TINY if not o.startswith("trainer.max_steps")), *spam_files(tmp_path / "spam"),
            "trainer.max_steps=8", "model.dropout=0", "trainer.precision=fp32", "loss.class_weights=balanced",
            "trainer.early_stopping_patience=1", "trainer.early_stopping_threshold=1.0"]
    for n in (1, 2):
        sft("train", *args, f"trainer.nproc={n}", f"run_name=n{n}", check=True, timeout=600)
    one, two = (read_jsonl(tmp_path / "runs" / f"n{n}" / "metrics.jsonl") for n in (1, 2))
    loss1, loss2 = ([(e["step"], e["train/loss_sup"]) for e in ev if "train/loss_sup" in e] for ev in (one, two))
    assert [s for s, _ in loss1] == [s for s, _ in loss2] == [1, 2, 3, 4]  # stopped at the second evaluation
    assert [v for _, v in loss1] == pytest.approx([v for _, v in loss2], abs=1e-5)
    s1, s2 = (json.loads((tmp_path / "runs" / f"n{n}" / "summary.json").read_text()) for n in (1, 2))
    assert s1["stopped_at_step"] == s2["stopped_at_step"] == 4 and s2["world_size"] == 2


def _self_training_value(weights, pseudo, index, logits, rank=0, world=1) -> torch.Tensor:
    """Self-training's term for one rank's share of a step whose global unlabeled batch is `index`."""
    from types import SimpleNamespace

    from sftcli.config import LossConfig
    from sftcli.objectives.self_training import SelfTraining

    st = SelfTraining(LossConfig(self_training_weight=1.0), None, None, None, weights)
    st.pseudo_labels = pseudo
    batch = SimpleNamespace(has_unlabeled=True, unlabeled_index=index)
    env = SimpleNamespace(device=torch.device("cpu"), rank=rank, world_size=world)
    view = SimpleNamespace(batch=batch, unlabeled_logits=logits, env=env)
    (term,) = st.contribute(view).terms
    return term.value


def test_self_training_weighs_a_text_by_its_pseudo_labels_class() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=gen)
    pseudo = np.array([0, 1, 2, 1, -1, 0])
    weight = np.array([0.5, 2.0, 3.0])
    kept = np.array([0, 1, 2, 3])
    # Every row pseudo-labeled: torch's class-weighted cross-entropy (a weighted mean).
    full = _self_training_value(weight, pseudo, kept, logits)
    expected = F.cross_entropy(logits, torch.tensor([0, 1, 2, 1]), weight=torch.tensor(weight, dtype=torch.float32))
    torch.testing.assert_close(full, expected)
    # Two ranks' world-size-scaled shares average (as DDP does) to the one-process value.
    shares = [_self_training_value(weight, pseudo, kept, logits[r * 2:(r + 1) * 2], r, 2) for r in range(2)]
    torch.testing.assert_close(sum(shares) / 2, full)
    # A row without a pseudo-label adds 0 and keeps weight 1 in the denominator, as the unweighted term does;
    # equal weights of 1 are exactly the unweighted term.
    with_unlabeled = np.array([0, 1, 4, 3])
    ce = F.cross_entropy(logits, torch.tensor([0, 1, 0, 1]), reduction="none")
    torch.testing.assert_close(_self_training_value(weight, pseudo, with_unlabeled, logits),
                               (0.5 * ce[0] + 2 * ce[1] + 2 * ce[3]) / (0.5 + 2 + 1 + 2))
    torch.testing.assert_close(_self_training_value(np.ones(3), pseudo, with_unlabeled, logits),
                               _self_training_value(None, pseudo, with_unlabeled, logits))
