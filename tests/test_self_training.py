"""Self-training with fresh students, and input noise on the unlabeled rows."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, read_jsonl, run_dirs

FRESH = [*TINY, "+strategy=mix", "lambda=0", "loss.self_training_weight=1", "loss.self_training_every=3",
         "loss.self_training_student=fresh", "trainer.max_steps=6", "trainer.eval_every=3"]


def objective(engine, name: str):
    """The engine's objective called `name` (sup, con, st, ...)."""
    return next(o for o in engine.objectives if o.name == name)


def _engine(tmp_path, cache_dir, monkeypatch, overrides: list[str]):
    """An in-process Engine (set up, not trained) for these overrides."""
    from hydra import compose, initialize_config_dir

    from sftcli import dist
    from sftcli.cli import config_dir
    from sftcli.config import parse_train
    from sftcli.engine.loop import Engine

    monkeypatch.setenv("SFT_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
        cfg = parse_train(compose(config_name="train", overrides=[*overrides, "trainer.progress=none"]))
    t = Engine(cfg, tmp_path / "run", dist.DistEnv())
    (tmp_path / "run").mkdir()
    t.setup()
    return t


@pytest.fixture
def trainer(tmp_path, cache_dir, monkeypatch):
    """An in-process Engine (set up, not trained) for the fresh-student settings above, with the
    contrastive term (lambda > 0) and its projection head."""
    overrides = [a for a in FRESH if not a.startswith(("trainer.log_every", "lambda"))] + ["lambda=0.5",
                                                                                           "loss.projection=mlp"]
    return _engine(tmp_path, cache_dir, monkeypatch, overrides)


def test_a_fresh_student_restarts_from_the_initial_weights_and_optimizer(trainer) -> None:
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    initial_head = {k: v.clone() for k, v in objective(trainer, "con").projection.state_dict().items()}
    # Train the teacher for one round by hand: a few real steps move the weights and fill AdamW's state.
    for _ in range(3):
        trainer._step()
        trainer._optimizer_step()
        trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.step += 1
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, initial[k])]
    assert moved and trainer.optimizer.state
    assert not torch.equal(objective(trainer, "con").projection.up.weight, initial_head["up.weight"])  # weight decay moved it
    teacher_head = trainer.model.classifier.weight.detach().clone()

    trainer.before_step()  # step 3 = self_training_every: the teacher labels, the student starts over

    assert objective(trainer, "st").pseudo_labels is not None and (objective(trainer, "st").pseudo_labels >= 0).any()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, initial[key]), key
    assert not torch.equal(trainer.model.classifier.weight, teacher_head)
    for key, value in objective(trainer, "con").projection.state_dict().items():  # the contrastive head starts over too
        assert torch.equal(value, initial_head[key]), key
    assert len(trainer.optimizer.state) == 0
    # The student's lr schedule starts over too: step 4 uses step 1's lr.
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(trainer.scheduler.lr_lambdas[0](0)
                                                               * trainer.scheduler.base_lrs[0])


def test_fresh_students_in_a_run_restart_the_lr_schedule_each_round(sft, tmp_path) -> None:
    sft("train", *FRESH, "trainer.max_steps=9", "loss.self_training_select=global", "loss.self_training_top=0.5",
        "loss.self_training_top_step=0.25", check=True)
    (run,) = run_dirs(tmp_path / "runs")
    lr = {e["step"]: e["train/lr"] for e in read_jsonl(run / "metrics.jsonl") if "train/lr" in e}
    relabels = [e for e in read_jsonl(run / "metrics.jsonl") if "self_training/kept" in e]
    assert [e["step"] for e in relabels] == [3, 6]
    # The curriculum: half of the 256 unlabeled texts at the first re-label, three quarters at the second.
    assert [e["self_training/kept"] for e in relabels] == [0.5, 0.75]
    # Three rounds of 3 steps, each warmed up and decayed on its own: the same lr at the same position.
    for step in (1, 2, 3):
        assert lr[step] == pytest.approx(lr[step + 3]) and lr[step] == pytest.approx(lr[step + 6])
    assert lr[1] > lr[3]


def test_unlabeled_mask_noises_only_the_unlabeled_rows(trainer) -> None:
    trainer.cfg.loss.unlabeled_mask_prob = 0.5
    start = trainer.batches.state_dict()
    batch = trainer.batches.next(0)
    n_lab = batch.n_labeled
    inputs, clean = batch.inputs, batch.clean_unlabeled
    assert n_lab and clean is not None
    # The labeled rows are untouched: drawn again from a fresh stream at the same position, unmasked.
    trainer.cfg.loss.unlabeled_mask_prob = 0.0
    trainer.batches.load_state_dict(start)
    plain = trainer.batches.next(0).inputs
    assert torch.equal(inputs["input_ids"][:n_lab], plain["input_ids"][:n_lab])
    assert torch.equal(clean["input_ids"], plain["input_ids"][n_lab:])
    changed = inputs["input_ids"][n_lab:] != clean["input_ids"]
    assert changed.any()
    assert (inputs["input_ids"][n_lab:][changed] == trainer.tokenizer.mask_token_id).all()
    # Padding and special tokens are never masked.
    special = torch.isin(clean["input_ids"], torch.tensor(trainer.tokenizer.all_special_ids))
    assert not (changed & special).any()


def test_labeled_mask_noises_the_labeled_rows_and_leaves_the_unlabeled_draws(trainer) -> None:
    trainer.cfg.loss.unlabeled_mask_prob = 0.3
    start = trainer.batches.state_dict()
    before = trainer.batches.next(0)
    trainer.cfg.loss.labeled_mask_prob = 0.5
    trainer.batches.load_state_dict(start)
    batch = trainer.batches.next(0)
    n_lab, ids, old = batch.n_labeled, batch.inputs["input_ids"], before.inputs["input_ids"]
    # The unlabeled rows are masked exactly as before: the labeled masks come from a draw of their own.
    assert torch.equal(ids[n_lab:], old[n_lab:])
    changed = ids[:n_lab] != old[:n_lab]
    assert changed.float().mean() > 0.15  # about half of the real tokens, special and pad ones never
    assert (ids[:n_lab][changed] == trainer.tokenizer.mask_token_id).all()
    special = torch.isin(old[:n_lab], torch.tensor(trainer.tokenizer.all_special_ids))
    assert not (changed & special).any()
    # Resumed at the same position, a step masks the same tokens.
    trainer.batches.load_state_dict(start)
    assert torch.equal(trainer.batches.next(0).inputs["input_ids"], ids)


def test_soft_targets_keep_the_teachers_probabilities(trainer) -> None:
    import numpy as np

    trainer.cfg.loss.self_training_targets = "soft"
    trainer.step = 3
    trainer.before_step()
    probs, labels = objective(trainer, "st").pseudo_probs, objective(trainer, "st").pseudo_labels
    assert probs is not None and probs.shape == (len(labels), len(trainer.data.label_names))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    kept = labels >= 0
    assert (probs[kept].argmax(1) == labels[kept]).all()
    # A step on the soft targets: the distillation term is there and finite.
    _, terms, _ = trainer._step()
    assert "st" in terms and torch.isfinite(terms["st"]) and terms["st"] > 0


def test_an_ensemble_labels_with_the_mean_of_every_teacher_so_far(tmp_path, cache_dir, monkeypatch) -> None:
    import numpy as np

    # 9 steps: re-labels at steps 3 and 6.
    trainer = _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "trainer.max_steps=9"])

    from sftcli.evaluate import predict_logits
    from sftcli.losses import softmax

    def teacher_probs() -> np.ndarray:
        return softmax(predict_logits(trainer.model, trainer.batches.unlabeled, trainer.tc.eval_batch_size, trainer.pad_id,
                                      trainer.env.device, trainer.precision, trainer.env))

    trainer.cfg.loss.self_training_ensemble = True
    trainer.step = 3
    first = teacher_probs()
    trainer.before_step()
    assert np.allclose(objective(trainer, "st").ensemble_probs, first)
    # A second teacher that disagrees: a different classifier.
    with torch.no_grad():
        trainer.model.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    second = teacher_probs()
    assert (first.argmax(1) != second.argmax(1)).any()
    trainer.step = 6
    trainer.before_step()
    mean = (first + second) / 2
    assert np.allclose(objective(trainer, "st").ensemble_probs, mean, atol=1e-6)
    kept = objective(trainer, "st").pseudo_labels >= 0
    assert (objective(trainer, "st").pseudo_labels[kept] == mean[kept].argmax(1)).all()


def test_the_self_training_recipe_is_the_chosen_configuration() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sftcli.cli import config_dir

    explicit = ["+strategy=mix", "lambda=0", "model.head_pooling=mean", "loss.self_training_weight=1",
                "loss.self_training_every=150", "loss.self_training_student=fresh",
                "loss.self_training_select=global", "loss.self_training_top=0.5",
                "loss.self_training_top_step=0.25", "trainer.max_steps=750"]

    def composed(overrides: list[str]) -> dict:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
            cfg = OmegaConf.to_container(compose(config_name="train", overrides=[*overrides, "run_name=x"]))
        return cfg

    recipe = composed(["+recipe=self_training"])
    assert recipe == composed(explicit)
    assert recipe != composed(["+strategy=mix"])
    # Command-line keys still win over the recipe's.
    assert composed(["+recipe=self_training", "loss.self_training_top=0.7"])["loss"]["self_training_top"] == 0.7


def test_short_bf16_batches_train_attention_on_the_math_backend(trainer) -> None:
    from torch.profiler import profile

    # Attention dropout 0 is where SDPA would pick its flash kernel on CPU.
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    trainer.precision = "bf16"

    def attention_ops(max_length: int) -> set[str]:
        trainer.tc.sdpa_math_max_length = max_length
        with profile() as prof:
            trainer._step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}

    short = attention_ops(128)
    assert "aten::_scaled_dot_product_attention_math" in short and not any("flash" in k for k in short)
    assert any("flash" in k for k in attention_ops(0))  # 0 = never: SDPA's own choice


def test_unlabeled_rows_are_drawn_only_when_a_term_reads_them(trainer) -> None:
    import numpy as np

    st = objective(trainer, "st")
    trainer.objectives = [o for o in trainer.objectives if o.name != "con"]  # lambda=0: nothing else reads them
    stream = trainer.batches.unlabeled_stream
    # Before the first re-label no term reads an unlabeled text: the mix step is a labeled step.
    assert trainer._unlabeled_rows() is None
    batch = trainer.batches.next(0, trainer._unlabeled_rows())
    assert not batch.has_unlabeled and batch.n_labeled == 8 and trainer.batches.samples == 8
    assert (stream.epoch, stream.offset) == (0, 0)

    trainer.step = 3
    trainer.before_step()
    kept = st.pseudo_labels >= 0
    assert 0 < kept.sum() < len(kept)
    # all (the default): the whole set, pseudo-labeled or not.
    assert trainer._unlabeled_rows().index is None
    # kept: only the pseudo-labeled texts, in a seeded order of their own; every drawn row has a target.
    trainer.cfg.loss.self_training_draw = "kept"
    rows = trainer._unlabeled_rows()
    assert np.array_equal(rows.index, np.flatnonzero(kept)) and rows.key == 3
    drawn = [trainer.batches.next(3 + i, rows) for i in range(20)]
    index = np.concatenate([b.unlabeled_index for b in drawn])
    assert (st.pseudo_labels[index] >= 0).all() and trainer.batches.samples == 16
    assert set(index) == set(np.flatnonzero(kept))  # 160 draws cross every kept text's epoch
    assert (stream.epoch, stream.offset) == (0, 0)  # the whole set's stream did not move
    # A term that reads every unlabeled text (the seed's InfoNCE) draws from all of them again.
    from sftcli.engine.steps import ALL_UNLABELED
    from sftcli.objectives.base import Objective

    class ReadsAll(Objective):
        name = "reads_all"

        def unlabeled_rows(self):
            return ALL_UNLABELED

    trainer.objectives.append(ReadsAll())
    assert trainer._unlabeled_rows() is ALL_UNLABELED


def test_a_re_label_scores_a_seeded_sample_and_reads_only_it(tmp_path, cache_dir, monkeypatch) -> None:
    import numpy as np

    # lambda=0: no frozen-encoder cache, which reads every text by design.
    trainer = _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "loss.self_training_sample=40"])
    st = objective(trainer, "st")
    pile = trainer.enc_unlabeled
    assert len(pile) == 256 and pile.read == 0  # nothing of the pile is tokenised before it is read
    trainer.step = 3
    trainer.before_step()
    # The re-label read the 40 sampled texts and nothing else; its arrays are the sample's size.
    assert pile.read == 40 and len(st.rows) == 40 and len(st.pseudo_labels) == 40
    assert np.array_equal(st.rows, np.unique(st.rows))
    kept = st.rows[st.pseudo_labels >= 0]
    assert 0 < len(kept) < 40
    # The pseudo-labels of any unlabeled texts: a sampled text's own, -1 outside the sample.
    outside = np.setdiff1d(np.arange(256), st.rows)[:5]
    assert (st.labels_of(outside) == -1).all()
    assert np.array_equal(st.labels_of(st.rows), st.pseudo_labels)
    # Students draw only the kept texts of the sample.
    trainer.cfg.loss.self_training_draw = "kept"
    assert np.array_equal(trainer._unlabeled_rows().index, kept)
    # The sample is a function of the seed and the round: the same every round unless resampled, a new
    # one per round with loss.self_training_resample.
    assert np.array_equal(st.sample(2, 256), st.rows) and np.array_equal(st.sample(1, 256), st.rows)
    st.lc.self_training_resample = True
    assert np.array_equal(st.sample(1, 256), st.rows) and not np.array_equal(st.sample(2, 256), st.rows)
    # What a checkpoint holds of it comes back as it was (the resume test below trains through one).
    saved = st.state_dict()
    st.rows, st.pseudo_labels = None, None
    st.load_state_dict(saved)
    assert np.array_equal(st.rows, saved["rows"].numpy()) and np.array_equal(trainer._unlabeled_rows().index, kept)
    # A sample as large as the pile is the pile: no index at all.
    assert st.sample(1, 40) is None


def test_resampling_with_an_ensemble_or_several_teachers_is_refused(sft) -> None:
    for extra in ("loss.self_training_ensemble=true", "loss.self_training_teachers=2"):
        r = sft("train", *FRESH, "loss.self_training_sample=10", "loss.self_training_resample=true", extra)
        assert r.returncode == 2 and "loss.self_training_resample" in r.stderr, r.stderr


@pytest.mark.slow  # about 20 s each: CI runs them after the default suite
@pytest.mark.parametrize("sample", [[], ["loss.self_training_sample=40", "loss.self_training_resample=true"]],
                         ids=["whole-pile", "resampled"])
def test_drawing_only_kept_texts_resumes_to_the_bit(sft, tmp_path, sample) -> None:
    from safetensors.torch import load_file

    # With a resampled pile the cut falls between the re-labels of step 3 and 6 (two samples).
    args = [*FRESH, "loss.self_training_draw=kept", "trainer.max_steps=8", "trainer.save_every=1",
            "loss.supcon_weight=1", "loss.supcon_unlabeled=true", *sample]
    ids = {name: tmp_path / f"{name}.jsonl" for name in ("ref", "cut")}
    sft("train", *args, "run_name=ref", check=True, env={"SFT_TEST_RECORD_IDS": str(ids["ref"])})
    # Stopped in the first student round, after its subset stream has moved.
    first = sft("train", *args, "run_name=cut", env={"SFT_TEST_SIGNAL_AT_STEP": "5",
                                                      "SFT_TEST_RECORD_IDS": str(ids["cut"])})
    assert first.returncode == 75, first.stderr
    sft("train", *args, "run_name=cut", "resume=auto", check=True, env={"SFT_TEST_RECORD_IDS": str(ids["cut"])})

    def consumed(path):
        by_key = {(r["step"], r["stream"]): r["ids"] for r in read_jsonl(path)}
        return sorted(by_key.items())

    ref = consumed(ids["ref"])
    assert consumed(ids["cut"]) == ref
    # No unlabeled batch in the teacher round (steps 1-3), one in every later step.
    assert [s for (s, stream), _ in ref if stream == "unlabeled"] == [4, 5, 6, 7, 8]
    a, b = (load_file(tmp_path / "runs" / n / "checkpoints" / "step-000008" / "model.safetensors")
            for n in ("ref", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_best_model_so_far_labels_when_asked(tmp_path, cache_dir, monkeypatch) -> None:
    import sftcli.engine.loop as st  # the engine runs the labeling model for the objective that asks

    engine = _engine(tmp_path, cache_dir, monkeypatch, [*FRESH, "loss.self_training_labeler=best"])
    assert engine._validate()  # the first evaluation is a new best: the engine keeps its weights
    best = engine.best_weights
    assert best is not None and all(torch.equal(best[k], v) for k, v in engine.model.state_dict().items())
    for _ in range(3):  # the teacher trains on; the model at the re-label is not the best one
        engine._step()
        engine._optimizer_step()
        engine.optimizer.zero_grad(set_to_none=True)
        engine.step += 1
    assert any(not torch.equal(best[k], v) for k, v in engine.model.state_dict().items())
    labelers = []
    real = st.predict_logits
    monkeypatch.setattr(st, "predict_logits", lambda model, *a, **k: labelers.append(
        {n: v.clone() for n, v in model.state_dict().items()}) or real(model, *a, **k))
    engine.before_step()
    assert len(labelers) == 1 and all(torch.equal(labelers[0][k], best[k]) for k in best)
    initial = objective(engine, "st").initial_state
    assert all(torch.equal(v, initial[k]) for k, v in engine.model.state_dict().items())  # the student starts over


def test_the_best_labeler_needs_fresh_students_and_evaluations() -> None:
    from sftcli.config import TrainConfig, parse_train
    from sftcli.errors import ConfigError

    raw = TrainConfig().model_dump()
    raw["strategy"] = {"name": "mix"}
    raw["loss"].update(weight=0.0, tau=0.05, self_training_weight=1.0, self_training_labeler="best",
                       self_training_student="continue")
    with pytest.raises(ConfigError, match="self_training_labeler: best needs loss.self_training_student=fresh"):
        parse_train(raw)
    raw["loss"]["self_training_student"] = "fresh"
    raw["trainer"]["eval_every"] = 0
    with pytest.raises(ConfigError, match="self_training_labeler: best needs evaluations"):
        parse_train(raw)
    raw["trainer"]["eval_every"] = 50
    assert parse_train(raw).loss.self_training_labeler == "best"


@pytest.mark.slow  # two tiny runs and a resume, about 40 s on 2 cores; CI runs it after the default suite
def test_labeling_with_the_best_model_resumes_to_the_bit(sft, tmp_path) -> None:
    from safetensors.torch import load_file

    args = [*FRESH, "loss.self_training_labeler=best", "loss.self_training_every=4", "trainer.max_steps=8",
            "trainer.eval_every=1", "trainer.save_every=1"]
    sft("train", *args, "run_name=ref", check=True)
    first = sft("train", *args, "run_name=cut", env={"SFT_TEST_SIGNAL_AT_STEP": "3"})  # before the re-label
    assert first.returncode == 75, first.stderr
    sft("train", *args, "run_name=cut", "resume=auto", check=True)
    runs = tmp_path / "runs"
    relabels = [[(e["step"], e["self_training/labeler_step"]) for e in read_jsonl(runs / n / "metrics.jsonl")
                 if "self_training/labeler_step" in e] for n in ("ref", "cut")]
    assert relabels[0] == relabels[1] and relabels[0]
    a, b = (load_file(runs / n / "checkpoints" / "step-000008" / "model.safetensors") for n in ("ref", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_lr_schedule_starts_over_every_period() -> None:
    from sftcli.engine.build import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = build_scheduler(opt, total=10, ratio=0.0, period=4).lr_lambdas[0]
    # Rounds of 4, 4 and 2 steps (the last cut short by the run's end), each decaying linearly to zero.
    assert [factor(s) for s in range(10)] == pytest.approx([1, 0.75, 0.5, 0.25, 1, 0.75, 0.5, 0.25, 1, 0.5])


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_several_teachers_label_the_first_student_with_their_mean(sft, tmp_path) -> None:
    # Rounds of 2 steps: teachers in the first two, students from step 4.
    args = [*FRESH, "loss.self_training_every=2", "loss.self_training_teachers=2", "trainer.max_steps=8",
            "trainer.eval_every=2"]
    sft("train", *args, "run_name=ref", check=True)
    events = read_jsonl(tmp_path / "runs" / "ref" / "metrics.jsonl")
    teachers = [e for e in events if "self_training/teacher" in e]
    relabels = [e for e in events if "self_training/kept" in e]
    assert [e["step"] for e in teachers] == [2] and [e["step"] for e in relabels] == [4, 6]
    # The first teacher's pile accuracy, alone and as the mean so far (only it): the same.
    assert teachers[0]["self_training/teacher_accuracy"] == teachers[0]["self_training/teachers_accuracy"]
    lr = {e["step"]: e["train/lr"] for e in events if "train/lr" in e}
    assert lr[1] == pytest.approx(lr[3]) == pytest.approx(lr[5])  # each model's schedule starts over
    # Stopped in the second teacher (after the first one's probabilities are in), then resumed: the same run.
    first = sft("train", *args, "trainer.save_every=1", "run_name=cut", env={"SFT_TEST_SIGNAL_AT_STEP": "3"})
    assert first.returncode == 75, first.stderr
    sft("train", *args, "trainer.save_every=1", "run_name=cut", "resume=auto", check=True)
    cut = read_jsonl(tmp_path / "runs" / "cut" / "metrics.jsonl")
    pick = ("self_training/kept", "self_training/min_confidence", "self_training/pseudo_label_accuracy")
    assert [[e[k] for k in pick] for e in cut if "self_training/kept" in e] == [[e[k] for k in pick] for e in relabels]


def test_several_teachers_need_fresh_students(sft) -> None:
    proc = sft("train", *FRESH, "loss.self_training_student=continue", "loss.self_training_teachers=2")
    assert proc.returncode == 2
    assert "loss.self_training_teachers: 2 teachers need loss.self_training_student=fresh" in proc.stderr


def test_teachers_that_leave_no_student_round_are_refused(sft) -> None:
    proc = sft("train", *FRESH, "loss.self_training_teachers=2")  # 6 steps: two rounds of 3
    assert proc.returncode == 2
    assert "loss.self_training_teachers: 2 teachers of 3 steps leave no student round in 6 steps" in proc.stderr


def test_each_teacher_is_a_round_of_its_own() -> None:
    from sftcli.config import TrainConfig, parse_train
    from sftcli.engine.build import training_plan

    raw = TrainConfig().model_dump()
    raw["strategy"] = {"name": "mix"}
    raw["loss"].update(weight=0.0, tau=0.05, self_training_weight=1.0, self_training_student="fresh",
                       self_training_rounds=3, self_training_teachers=2)
    raw["trainer"].update(epochs=75, batch_size=16)
    cfg = parse_train(raw)
    # 96 labeled texts: 450 steps in three rounds of 150, and a second teacher's round on top.
    plan = training_plan(cfg, 96)
    assert plan.max_steps == 600 and plan.round_steps == 150


def test_a_sample_of_every_text_labels_and_trains_as_the_whole_pile(tmp_path, cache_dir, monkeypatch) -> None:
    import numpy as np

    # The sample's bookkeeping (scored rows, positions, kept rows, labels of a batch) adds nothing of its
    # own: scoring every text through it gives the whole pile's pseudo-labels, draws and loss.
    runs = {}
    for name in ("whole", "sampled"):
        (tmp_path / name).mkdir()
        t = _engine(tmp_path / name, cache_dir, monkeypatch, [*FRESH, "loss.self_training_draw=kept",
                                                              "loss.supcon_weight=1", "loss.supcon_unlabeled=true",
                                                              "trainer.precision=fp32"])
        st = objective(t, "st")
        if name == "sampled":
            monkeypatch.setattr(st, "sample", lambda relabel, n: np.arange(n))
        t.step = 3
        t.before_step()
        loss, terms, _ = t._step()
        runs[name] = (st.rows, st.labels_of(np.arange(256)), t._unlabeled_rows().index, float(loss), st)
    whole, sampled = runs["whole"], runs["sampled"]
    assert whole[0] is None and np.array_equal(sampled[0], np.arange(256))
    assert np.array_equal(whole[1], sampled[1]) and np.array_equal(whole[2], sampled[2])
    assert whole[3] == sampled[3]
