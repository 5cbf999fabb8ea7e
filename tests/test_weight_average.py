"""trainer.ema_decay: the moving average of the weights is what is evaluated, re-labels the unlabeled texts,
goes into checkpoints and is exported; the optimizer trains the raw weights; a fresh self-training student
restarts the average; a killed run resumes to the bit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from sftcli.engine.averaging import WeightAverage, warmed_up_decay

EMA = [*TINY, "+strategy=mix", "lambda=0", "loss.self_training_weight=1", "loss.self_training_every=3",
       "loss.self_training_student=fresh", "trainer.max_steps=8", "trainer.eval_every=2", "trainer.save_every=1",
       "trainer.keep_last=20", "trainer.keep_train_state=20", "trainer.ema_decay=0.5"]


def test_the_average_is_a_warmed_up_ema_and_a_reset_starts_it_over() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.2)  # below the warm-up's 2/11 only from the second update on
    expected = None
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        current = {k: v.clone() for k, v in model.state_dict().items()}
        average.update(model)
        if expected is None:
            expected = current  # the first update copies
        else:
            d = warmed_up_decay(0.2, n)
            expected = {k: d * expected[k] + (1 - d) * current[k] for k in current}
        for key, value in average.module.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
        assert torch.equal(model.weight, current["weight"])  # the raw weights are left alone
    assert [warmed_up_decay(0.2, n) for n in (1, 2, 4)] == [pytest.approx(2 / 11), 0.2, 0.2]
    assert not any(p.requires_grad for p in average.module.parameters())

    with torch.no_grad():
        model.weight.mul_(3)
    average.reset(model)
    assert torch.equal(average.module.weight, model.weight) and int(average.averaged.n_averaged) == 0


def test_the_average_is_what_is_evaluated_labels_and_is_saved(tmp_path, cache_dir, monkeypatch) -> None:
    from hydra import compose, initialize_config_dir

    import sftcli.engine.loop as st  # the engine runs the labeling model for the objective that asks
    from sftcli import dist
    from sftcli.cli import config_dir
    from sftcli.config import parse_train
    from sftcli.engine.loop import Engine

    monkeypatch.setenv("SFT_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
        cfg = parse_train(compose(config_name="train", overrides=[*EMA, "trainer.max_steps=6",
                                                                   "trainer.progress=none"]))
    engine = Engine(cfg, tmp_path / "run", dist.DistEnv())
    (tmp_path / "run").mkdir()
    engine.setup()
    assert engine.average is not None and engine.eval_model is engine.average.module
    labelers, evaluated = [], []
    real_predict = st.predict_logits
    monkeypatch.setattr(st, "predict_logits", lambda model, *a, **k: labelers.append(model) or real_predict(model, *a, **k))
    import sftcli.engine.loop as loop

    real_evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda model, *a, **k: evaluated.append(model) or real_evaluate(model, *a, **k))
    restarts = []
    real_restart = engine.restart_from

    def restart(weights):
        real_restart(weights)
        restarts.append(({k: v.clone() for k, v in engine.average.module.state_dict().items()},
                         int(engine.average.averaged.n_averaged)))

    engine.restart_from = restart
    engine.train()

    assert labelers and all(m is engine.average.module for m in labelers)  # steps 3 and 6 re-label
    # Validation at steps 2, 4, 6 on the average; the final scoring reads the best checkpoint back.
    assert evaluated[:3] == [engine.average.module] * 3
    # The student of step 3 starts the average over from the initial weights.
    assert restarts
    initial = next(o for o in engine.objectives if o.name == "st").initial_state
    assert initial is not None and restarts[0][1] == 0
    for key, value in restarts[0][0].items():
        assert torch.equal(value, initial[key]), key
    # A checkpoint's weights are the average; its training state keeps the raw weights for resume.
    last = tmp_path / "run" / "checkpoints" / "step-000006"
    saved = load_file(last / "model.safetensors")
    raw = torch.load(last / "train_state.pt", weights_only=False)["average"]
    assert raw["n_averaged"] == 3  # steps 4, 5, 6 of the second student
    for key, value in engine.average.module.state_dict().items():
        if key in saved:
            assert torch.equal(saved[key], value), key
    assert any(not torch.equal(saved[k], raw["raw_model"][k]) for k in saved)


@pytest.mark.slow  # three tiny runs, about 40 s on 2 cores; CI runs it after the default suite
def test_a_killed_run_with_an_average_resumes_to_the_bit(sft, tmp_path) -> None:
    sft("train", *EMA, "run_name=ref", check=True)
    first = sft("train", *EMA, "run_name=cut", env={"SFT_TEST_SIGNAL_AT_STEP": "5"})  # inside the first student
    assert first.returncode == 75, first.stderr
    sft("train", *EMA, "run_name=cut", "resume=auto", check=True)
    ref, cut = (tmp_path / "runs" / n / "checkpoints" / "step-000008" for n in ("ref", "cut"))
    a, b = load_file(ref / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw_a, raw_b = (torch.load(p / "train_state.pt", weights_only=False)["average"] for p in (ref, cut))
    assert raw_a["n_averaged"] == raw_b["n_averaged"]
    assert all(torch.equal(raw_a["raw_model"][k], raw_b["raw_model"][k]) for k in raw_a["raw_model"])
    s_ref, s_cut = (json.loads((tmp_path / "runs" / n / "summary.json").read_text()) for n in ("ref", "cut"))
    for key in ("best_checkpoint", "select_value", "test/accuracy"):
        assert s_cut[key] == s_ref[key], key
