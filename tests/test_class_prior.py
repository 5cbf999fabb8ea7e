"""The unlabeled texts' class prior (sftcli/prior.py): Bayes' rule as a logit bias, folded into the exported
head (model.class_prior=unlabeled) and used to choose pseudo-labels (loss.self_training_prior=unlabeled)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, read_jsonl
from test_self_training import FRESH, _engine, objective

from sftcli import checkpoint as ckpt
from sftcli import prior
from sftcli.losses import select_pseudo_labels, softmax


def test_the_reweighted_probabilities_are_bayes_rule_and_a_logit_bias() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    train, target = np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.05, 0.5, 0.15, 0.3])
    shift = prior.logit_shift(target, train)
    bayes = softmax(logits) * (target / train)
    bayes /= bayes.sum(1, keepdims=True)
    np.testing.assert_allclose(prior.reweight(softmax(logits), shift), bayes, rtol=1e-5)
    np.testing.assert_allclose(softmax(logits + shift.astype(np.float32)), bayes, rtol=1e-4)
    # The same prior as trained under moves nothing.
    np.testing.assert_allclose(prior.reweight(softmax(logits), prior.logit_shift(train, train)), softmax(logits),
                               rtol=1e-6)


def test_a_class_trained_on_no_text_keeps_its_logit() -> None:
    # data.label_names: class 2 has no labeled text (its share is the floor). Its odds were never learned,
    # so nothing corrects them: dividing by the floor would make it the prediction almost everywhere.
    train = prior.labeled_prior(np.array([0, 0, 1, 1, 1, 1]), 3)
    shift = prior.logit_shift(np.array([0.5, 0.4, 0.1]), train)
    assert shift[2] == 0.0
    np.testing.assert_allclose(shift[:2], np.log([0.5, 0.4]) - np.log(train[:2]))


def test_the_estimate_is_the_mean_probability_and_never_zero() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(prior.estimate_prior(probs), [0.7, 0.3, prior.MIN_SHARE])
    np.testing.assert_allclose(prior.labeled_prior(np.array([0, 0, 1, 1, 1, 1]), 3), [1 / 3, 2 / 3, prior.MIN_SHARE])


def test_a_student_is_trained_under_the_labeled_and_the_pseudo_labeled_prior_by_their_weights() -> None:
    labeled, pseudo = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    np.testing.assert_allclose(prior.trained_prior(labeled, pseudo, 1.0), [0.7, 0.3])
    np.testing.assert_allclose(prior.trained_prior(labeled, pseudo, 3.0), [0.8, 0.2])
    np.testing.assert_allclose(prior.trained_prior(labeled, None, 1.0), labeled)
    np.testing.assert_allclose(prior.trained_prior(labeled, pseudo, 0.0), labeled)


@pytest.mark.parametrize("model_type", ["sft_encoder", "sft_bert", "distilbert"])
def test_folding_into_the_head_adds_the_shift_to_every_logit(model_type) -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

    from sftcli.modeling_sft_bert import SftBertConfig, SftBertForSequenceClassification

    torch.manual_seed(0)
    if model_type == "sft_encoder":
        from sftcli.model import head_config
        from sftcli.modeling_sft import SftEncoderForSequenceClassification

        model = SftEncoderForSequenceClassification(head_config(DistilBertConfig(
            vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3), "mean"))
    elif model_type == "sft_bert":
        model = SftBertForSequenceClassification(SftBertConfig(**BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            num_labels=3).to_dict()))
    else:
        model = AutoModelForSequenceClassification.from_config(DistilBertConfig(
            vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3))
    model.eval()
    ids = torch.randint(5, 50, (4, 7))
    before = model(input_ids=ids).logits
    shift = np.array([0.5, -1.0, 2.0])
    prior.fold_into_head(model, shift)
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before + torch.tensor(shift, dtype=torch.float32), rtol=0, atol=1e-5)


def test_a_head_without_a_bias_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3, bias=False))
    with pytest.raises(ValueError, match="no bias"):
        prior.fold_into_head(model, np.zeros(3))
    with pytest.raises(ValueError, match="no linear layer with 5 outputs"):
        prior.head_layer(model, 5)


def test_a_head_without_a_bias_is_refused_before_training(tmp_path, cache_dir, monkeypatch) -> None:
    import sftcli.engine.build as build
    from sftcli.errors import ConfigError

    real = build.build_model

    def without_bias(*args, **kwargs):
        model = real(*args, **kwargs)
        model.classifier.bias = None
        return model

    monkeypatch.setattr(build, "build_model", without_bias)
    with pytest.raises(ConfigError, match=r"model.class_prior=unlabeled: the head of .* has no bias"):
        _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "model.class_prior=unlabeled"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pseudo_labels_are_chosen_under_the_estimated_prior(tmp_path, cache_dir, monkeypatch) -> None:
    import sftcli.engine.loop as st  # the engine runs the labeling model for the objective that asks

    engine = _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "loss.self_training_prior=unlabeled"])
    n = len(engine.enc_unlabeled)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(n, len(engine.data.label_names))).astype(np.float32)
    logits[:, 0] += 1.5  # the labeling model favours class 0 over the labeled texts' prior
    monkeypatch.setattr(st, "predict_logits", lambda *a, **k: logits)
    trained_before = engine.train_prior.copy()
    engine.step = engine.cfg.loss.self_training_every
    engine.before_step()

    probs = softmax(logits)
    expected = prior.reweight(probs, prior.logit_shift(prior.estimate_prior(probs), trained_before))
    chosen, _ = select_pseudo_labels(expected, engine.cfg.loss.self_training_top, per_class=True)
    pseudo = objective(engine, "st").pseudo_labels
    np.testing.assert_array_equal(pseudo, chosen)
    unweighted, _ = select_pseudo_labels(probs, engine.cfg.loss.self_training_top, per_class=True)
    assert not np.array_equal(pseudo, unweighted)
    # The student now trains under the labeled texts' prior and its pseudo-labels' (weights 1 and 1).
    kept = np.bincount(pseudo[pseudo >= 0], minlength=len(trained_before)) / (pseudo >= 0).sum()
    np.testing.assert_allclose(engine.train_prior, (engine.labeled_prior + kept) / 2)


PRIOR = ["+strategy=mix", "lambda=0", "model.head_pooling=mean", "loss.self_training_weight=1",
         "loss.self_training_every=3", "loss.self_training_student=fresh", "trainer.max_steps=6",
         "trainer.eval_every=3", "trainer.save_every=1", "optim.lr=1e-3", "model.class_prior=unlabeled",
         "loss.self_training_prior=unlabeled"]


def test_the_export_predicts_under_the_estimated_prior_and_sft_answers_as_it_does(sft, tmp_path) -> None:
    from safetensors.torch import load_file

    sft("train", *TINY, *PRIOR, "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    cp = summary["class_prior"]
    best = run / summary["best_checkpoint"]
    trained = ckpt.read_sft_state(best)["train_prior"]
    names = summary["label_names"]
    assert cp["folded"] and cp["texts"] == 256 and list(cp["estimated"]) == names
    np.testing.assert_allclose([cp["trained"][n] for n in names], trained)
    np.testing.assert_allclose(cp["shift"], np.log([cp["estimated"][n] for n in names]) - np.log(trained), rtol=1e-6)
    # The export's head bias is the best checkpoint's plus the shift; every other weight is the same,
    # and the checkpoint itself is left as trained.
    exported, raw = load_file(run / "model" / "model.safetensors"), ckpt.load_weights(best)
    assert exported.keys() == raw.keys()
    for key in raw:
        if key == "classifier.bias":
            torch.testing.assert_close(exported[key], raw[key] + torch.tensor(cp["shift"], dtype=torch.float32))
        else:
            assert torch.equal(exported[key], raw[key]), key
    # A re-label logs the prior it estimated.
    relabels = [e for e in read_jsonl(run / "metrics.jsonl") if "self_training/kept" in e]
    assert relabels and all(f"self_training/prior_{n}" in e for e in relabels for n in names)
    # `sft eval` of the run reproduces the test accuracy of the summary (the corrected model's).
    sft("eval", f"checkpoint={run / 'model'}", "precision=bf16", "run_name=e", check=True)
    result = json.loads((tmp_path / "runs" / "eval" / "e" / "eval.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test/accuracy"], abs=1e-9)
    # `sft predict` of the run answers as plain transformers does with the export.
    from test_export import TEXTS, plain_transformers, sft_predictions

    plain = plain_transformers(run / "model", TEXTS, remote=True)
    assert plain.returncode == 0, plain.stderr
    theirs = json.loads(plain.stdout.strip().splitlines()[-1])["scores"]
    for t, mine in zip(theirs, sft_predictions(sft, run, tmp_path), strict=True):
        for name in names:
            assert abs(t[name] - mine[f"prob_{name}"]) < 1e-4, (name, t, mine)


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_a_resumed_run_folds_the_same_prior(sft, tmp_path) -> None:
    from safetensors.torch import load_file

    sft("train", *TINY, *PRIOR, "run_name=ref", check=True)
    # Stopped in the student's round: the prior it trains under comes back from the checkpoint.
    first = sft("train", *TINY, *PRIOR, "run_name=cut", env={"SFT_TEST_SIGNAL_AT_STEP": "5"})
    assert first.returncode == 75, first.stderr
    sft("train", *TINY, *PRIOR, "run_name=cut", "resume=auto", check=True)
    ref, cut = (json.loads((tmp_path / "runs" / n / "summary.json").read_text()) for n in ("ref", "cut"))
    assert ref["class_prior"] == cut["class_prior"] and ref["test/accuracy"] == cut["test/accuracy"]
    a, b = (load_file(tmp_path / "runs" / n / "model" / "model.safetensors") for n in ("ref", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_unlabeled_texts_the_labeled_prior_stays(sft, tmp_path) -> None:
    sft("train", *TINY, "model.class_prior=unlabeled", "data.max_unlabeled=0", "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_prior"] == {"folded": False, "reason": "no unlabeled texts"}
    best = run / summary["best_checkpoint"] / "model.safetensors"
    assert (run / "model" / "model.safetensors").read_bytes() == best.read_bytes()


def test_a_supervised_run_estimates_the_prior_from_the_rest_of_train(sft, tmp_path) -> None:
    # No strategy: the unlabeled texts are read for the estimate only.
    sft("train", *TINY, "model.class_prior=unlabeled", "run_name=r", check=True)
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["class_prior"]["folded"] and summary["class_prior"]["texts"] == 256
    assert summary["objectives"] == ["sup"]


def test_a_subset_of_encoded_texts_holds_those_texts_in_order() -> None:
    from sftcli.data import Encoded

    enc = Encoded(np.arange(10), np.array([0, 3, 4, 8, 10]), None)
    sub = enc.subset(np.array([3, 0]))
    assert len(sub) == 2 and sub.get(0)[0].tolist() == [8, 9] and sub.get(1)[0].tolist() == [0, 1, 2]
    assert sub.lengths().tolist() == [2, 3] and sub.type_ids is None


def test_a_large_pile_is_sampled_for_the_estimate(tmp_path, cache_dir, monkeypatch) -> None:
    from sftcli.engine import state
    from sftcli.engine.finish import fold_class_prior

    engine = _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "model.class_prior=unlabeled"])
    path = state.save(engine)
    monkeypatch.setattr(prior, "ESTIMATE_TEXTS", 100)
    head = prior.head_layer(engine.model, len(engine.data.label_names))
    before = head.bias.detach().clone()
    record = fold_class_prior(engine, path)
    assert record["folded"] and record["texts"] == 100
    torch.testing.assert_close(head.bias.detach(), before + torch.tensor(record["shift"], dtype=before.dtype))
