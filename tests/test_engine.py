"""The engine's step: gradient clipping as torch computes it, and the objectives seam (a term added as
one module: the supervised contrastive term)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, read_jsonl, run_dirs

from sftcli.objectives.supcon import supcon_loss


@pytest.fixture
def engine(request, tmp_path, cache_dir, monkeypatch):
    """An in-process Engine on the tiny model with a small clipping norm, so clipping is active; indirect
    parametrization adds overrides."""
    from hydra import compose, initialize_config_dir

    from sftcli import dist
    from sftcli.cli import config_dir
    from sftcli.config import parse_train
    from sftcli.engine.loop import Engine

    monkeypatch.setenv("SFT_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    overrides = [a for a in TINY if not a.startswith("trainer.log_every")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
        cfg = parse_train(compose(config_name="train", overrides=[*overrides, "trainer.progress=none",
                                                                   "optim.max_grad_norm=0.01", "model.dropout=0",
                                                                   *getattr(request, "param", [])]))
    e = Engine(cfg, tmp_path / "run", dist.DistEnv())
    (tmp_path / "run").mkdir()
    e.setup()
    return e


def test_clipping_matches_clip_grad_norm_and_a_plain_adamw(engine) -> None:
    params = [p for _, p in engine.named_parameters()]
    start = [p.detach().clone() for p in params]
    # The same groups, lr, betas, decay and fused kernel, on copies of the weights.
    reference = torch.optim.AdamW([{**g, "params": [p.detach().clone().requires_grad_(True) for p in g["params"]]}
                                   for g in engine.optimizer.param_groups])
    ref_params = [p for g in reference.param_groups for p in g["params"]]
    order = [id(p) for g in engine.optimizer.param_groups for p in g["params"]]
    by_id = dict(zip(order, ref_params, strict=True))
    for _ in range(3):
        engine._step()
        for p in params:
            by_id[id(p)].grad = p.grad.detach().clone()
        norm = engine._clip_gradients()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_params, 0.01)
        assert norm > 0.01  # clipping was active
        torch.testing.assert_close(norm, ref_norm)
        engine._optimizer_step()
        reference.step()
        engine.optimizer.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        for p in params:  # both optimizers trained the same weights the same way
            torch.testing.assert_close(p.detach(), by_id[id(p)].detach(), rtol=1e-5, atol=1e-7)
            by_id[id(p)].data.copy_(p.detach())  # the next step's forward runs on the engine's weights
    assert any(not torch.equal(p, s) for p, s in zip(params, start, strict=True))


def test_without_clipping_the_reported_norm_is_the_dense_norm_and_gradients_stay(engine) -> None:
    engine.cfg.optim.max_grad_norm = None
    engine._step()
    params = [p for _, p in engine.named_parameters() if p.grad is not None]
    before = [p.grad.clone() for p in params]
    norm = engine._clip_gradients()
    torch.testing.assert_close(norm, torch.stack([g.norm() for g in before]).norm())
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before, strict=True))


def test_without_layer_decay_there_are_two_groups_decayed_and_not(engine) -> None:
    groups = engine.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert {g["lr"] for g in groups} == {engine.scheduler.base_lrs[0]} == {1e-4}


@pytest.mark.parametrize("engine", [["optim.layer_decay=0.5", "optim.warmup_ratio=0", "optim.max_grad_norm=null"]], indirect=True)
def test_layer_decay_moves_each_layer_by_its_own_lr(engine) -> None:
    names = {id(p): n for n, p in engine.named_parameters()}
    depth = engine.model.config.num_hidden_layers
    expected = {"embeddings": 0.5 ** (depth + 1), **{f"layer.{i}.": 0.5 ** (depth - i) for i in range(depth)}}
    start = {n: p.detach().clone() for n, p in engine.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in engine.optimizer.param_groups for p in g["params"]}
    engine._step()
    engine._clip_gradients()
    engine._optimizer_step()
    seen = set()
    for name, p in engine.named_parameters():
        part = next((k for k in expected if k in name), None)
        factor = expected[part] if part else 1.0  # the head and pooler train at the full lr
        assert lrs[name] == pytest.approx(1e-4 * factor), name
        seen.add(part)
        if p.ndim >= 2:  # (some biases get no gradient: a key bias cancels in the softmax)
            # Unclipped, AdamW's first step moves every weight with a gradient by about lr (the normalised
            # gradient is +-1), so the largest change of each matrix is its group's lr.
            moved = (p.detach() - start[name]).abs().max().item()
            assert moved == pytest.approx(lrs[name], rel=0.02), name
    assert seen == {*expected, None}


def test_layer_decay_finds_the_layers_of_other_bert_family_names() -> None:
    from sftcli.engine.build import layer_lr_scales

    names = ["distilbert.embeddings.word_embeddings.weight", "distilbert.transformer.layer.0.ffn.lin1.weight",
             "distilbert.transformer.layer.1.ffn.lin1.weight", "pre_classifier.weight", "classifier.bias",
             "projection.up.weight"]
    assert layer_lr_scales(names, 0.5) == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert layer_lr_scales(names, 1.0) == [1.0] * 6


@pytest.mark.parametrize("engine", [["loss.label_smoothing=0.2"]], indirect=True)
def test_label_smoothing_reaches_the_labeled_cross_entropy(engine) -> None:
    sup = engine.objectives[0]
    assert sup.name == "sup" and sup.smoothing == 0.2


def _supcon_reference(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla et al.'s L_out, written as the paper's sums, one anchor at a time."""
    z = torch.nn.functional.normalize(z, dim=-1)
    total = torch.zeros(())
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = torch.stack([torch.exp(z[i] @ z[a] / tau) for a in others]).sum()
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denominator) for p in positives) / len(positives)
    return total


def test_supcon_loss_is_the_papers_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 anchors have no positive
    total, anchors = supcon_loss(z, labels, z, labels, tau=0.1, self_offset=0)
    torch.testing.assert_close(total.double(), _supcon_reference(z.float(), labels, 0.1).double(), rtol=1e-5,
                               atol=1e-5)
    assert int(anchors) == 5
    # One rank's rows against the whole global batch: the same sum as its share of the anchors.
    part, _ = supcon_loss(z[3:], labels[3:], z, labels, tau=0.1, self_offset=3)
    first, _ = supcon_loss(z[:3], labels[:3], z, labels, tau=0.1, self_offset=0)
    torch.testing.assert_close(part + first, total)


def test_supcon_rows_without_a_label_take_no_part() -> None:
    # loss.supcon_unlabeled: unlabeled rows without a pseudo-label (-1) are neither anchors nor keys, so
    # the sum equals the one over the other rows alone, value and gradient.
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, -1, 0, 1, -1, 2, 2])
    keep = labels >= 0
    total, anchors = supcon_loss(z, labels, z, labels, tau=0.1, self_offset=0)
    z_kept = z[keep]
    alone, alone_anchors = supcon_loss(z_kept, labels[keep], z_kept, labels[keep], tau=0.1, self_offset=0)
    torch.testing.assert_close(total, alone)
    assert int(anchors) == int(alone_anchors) == 6
    (grad,) = torch.autograd.grad(total, z)
    assert torch.all(grad[~keep] == 0) and torch.all(torch.isfinite(grad))
    # No valid row at all (an unlabeled-only step before any pseudo-label is kept): zero, not NaN.
    none, n = supcon_loss(z[:2], torch.tensor([-1, -1]), z[:2], torch.tensor([-1, -1]), tau=0.1, self_offset=0)
    assert float(none.detach()) == 0.0 and int(n) == 0


def test_supcon_on_pseudo_labeled_texts_joins_from_the_first_re_label(sft, tmp_path) -> None:
    args = [*TINY, "+strategy=mix", "lambda=0", "loss.self_training_weight=1", "loss.self_training_every=2",
            "loss.supcon_weight=1"]
    sft("train", *args, "run_name=labeled", check=True)
    sft("train", *args, "loss.supcon_unlabeled=true", "run_name=both", check=True)

    def supcon(name: str) -> dict[int, float]:
        return {e["step"]: e["train/loss_supcon"] for e in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
                if "train/loss_supcon" in e}

    labeled, both = supcon("labeled"), supcon("both")
    # Until the first re-label (after step 2) there are no pseudo-labels: the same term, to the bit.
    assert [labeled[s] for s in (1, 2)] == [both[s] for s in (1, 2)]
    # From then on the pseudo-labeled unlabeled rows are in it.
    assert labeled[3] != both[3] and labeled[4] != both[4]
    # Without self-training the unlabeled rows have no class: refused before training, naming the key.
    proc = sft("train", *TINY, "loss.supcon_weight=1", "loss.supcon_unlabeled=true")
    assert proc.returncode == 2
    assert "loss.self_training_weight" in proc.stderr and "supcon_unlabeled" in proc.stderr


def test_supcon_is_one_more_weighted_term_of_the_loss(sft, tmp_path) -> None:
    sft("train", *TINY, "loss.supcon_weight=0.5", "run_name=s", check=True)
    (run,) = run_dirs(tmp_path / "runs")
    steps = [e for e in read_jsonl(run / "metrics.jsonl") if "train/loss_supcon" in e]
    assert len(steps) == 4  # log_every=1
    for e in steps:
        assert e["train/loss"] == pytest.approx(e["train/loss_sup"] + 0.5 * e["train/loss_supcon"], rel=1e-6)
        assert e["train/loss_supcon"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objectives"] == ["sup", "supcon"]


def test_a_term_with_weight_zero_costs_nothing(sft, tmp_path) -> None:
    # +recipe=self_training sets lambda=0: no contrastive objective, no frozen-encoder cache, no loss_con.
    sft("train", *TINY, "+strategy=mix", "lambda=0", "run_name=z", check=True,
        env={"SFT_CACHE_DIR": str(tmp_path / "cache")})
    (run,) = run_dirs(tmp_path / "runs")
    assert not any("train/loss_con" in e for e in read_jsonl(run / "metrics.jsonl"))
    assert not (tmp_path / "cache" / "teacher").exists()
    assert json.loads((run / "summary.json").read_text())["objectives"] == ["sup"]


def test_simcse_positive_needs_no_frozen_encoder(sft, tmp_path) -> None:
    # loss.positive=dropout: the positive is the text's second dropout view through the trained model.
    cache = tmp_path / "cache"
    sft("train", *TINY, "+strategy=mix", "lambda=0.5", "loss.positive=dropout", "model.dropout=0.2",
        "run_name=d", check=True, env={"SFT_CACHE_DIR": str(cache)})
    steps = [e for e in read_jsonl(tmp_path / "runs" / "d" / "metrics.jsonl") if "train/loss_con" in e]
    assert len(steps) == 4 and all(e["train/loss_con"] > 0 for e in steps)
    # A second dropout draw: close to the query, not the same (a frozen rep of a random tiny BERT is far).
    assert all(0.5 < e["train/con_pos_sim"] < 1.0 for e in steps)
    assert not any("train/con_drift" in e for e in steps)
    assert not (cache / "teacher").exists()
    # Without dropout the two views are one: the positive is the query itself.
    sft("train", *TINY, "+strategy=mix", "lambda=0.5", "loss.positive=dropout", "model.dropout=0",
        "run_name=n", check=True, env={"SFT_CACHE_DIR": str(cache)})
    same = [e for e in read_jsonl(tmp_path / "runs" / "n" / "metrics.jsonl") if "train/con_pos_sim" in e]
    assert all(e["train/con_pos_sim"] == pytest.approx(1.0, abs=1e-3) for e in same)
