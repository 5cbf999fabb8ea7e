"""The command line is composed once: one composition of the config for a single run, one for a sweep and
one for each of its jobs (Hydra's own launcher composes a job's config from the sweep's), counted where
Hydra composes (its config loader) while the real CLI runs in this process."""

from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from sftcli.cli import main

FAST = ["model=tiny", "trainer.max_steps=1", "trainer.eval_every=0", "trainer.batch_size=8",
        "trainer.eval_batch_size=256", "data.max_unlabeled=64"]


@pytest.fixture
def compositions(monkeypatch, tmp_path, cache_dir) -> list[str]:
    """Each composition's config name, in order, while the test runs `sft` in tmp_path."""
    seen: list[str] = []
    load = ConfigLoaderImpl.load_configuration

    def counted(self, config_name, *args, **kwargs):
        seen.append(str(config_name))
        return load(self, config_name, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SFT_CACHE_DIR", str(cache_dir))
    return seen


def _sft(*args: str) -> int:
    with pytest.raises(SystemExit) as end:
        main(list(args))
    return int(end.value.code or 0)


def test_a_single_run_is_composed_once(compositions, tmp_path) -> None:
    assert _sft("train", *FAST, "run_name=one") == 0
    assert compositions == ["train"]
    assert (tmp_path / "runs" / "one" / "summary.json").is_file()


def test_a_sweep_is_composed_once_and_each_job_once(compositions, tmp_path) -> None:
    assert _sft("train", "-m", *FAST, "seed=0,1,2", "hydra.sweep.dir=S") == 0
    assert compositions == ["train"] * 4  # the sweep, then its three jobs
    assert sorted(p.name for p in (tmp_path / "S").iterdir() if p.is_dir()) == ["0", "1", "2"]


def test_a_refused_run_is_composed_once_and_leaves_nothing(compositions, tmp_path) -> None:
    assert _sft("train", *FAST, "optim.lr=-1") == 2
    assert compositions == ["train"]
    assert not (tmp_path / "runs").exists()


def test_the_public_compose_is_the_command_lines_one_composition(compositions) -> None:
    from sftcli.api import UserError, compose_train

    cfg = compose_train(["model=tiny", "+recipe=best", "seed=3", "loss.self_training_top=0.25"])
    assert compositions == ["train"]
    assert (cfg.seed, cfg.loss.supcon_weight, cfg.loss.self_training_top) == (3, 1.0, 0.25)
    assert cfg.strategy is not None and cfg.strategy.name == "mix"
    with pytest.raises(UserError, match="loss.self_training_top"):
        compose_train(["loss.self_training_top=2"])
