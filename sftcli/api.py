"""sft's Python API: what a script may build on (benchmarks/, experiments/, a user's own study). Everything
else in sftcli is the command line's inside and may change; tests/test_structure.py holds the project's
scripts to these names.

    from sftcli.api import Engine, compose_train, local_env

    cfg = compose_train(["+recipe=best", "seed=1"])   # as `sft train +recipe=best seed=1` composes it
    engine = Engine(cfg, run_dir, local_env(cfg))
    engine.setup()
    engine.train()
"""

from __future__ import annotations

from pathlib import Path

import torch

from sftcli import timing
from sftcli.checkpoint import listed as listed_checkpoints
from sftcli.checkpoint import load_weights
from sftcli.commands.predict import load_model, predict_probs
from sftcli.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
    parse_train,
    to_plain,
)
from sftcli.data import DataBundle, Encoded, encode, load_data
from sftcli.data.sources import trec6_path
from sftcli.dist import DistEnv
from sftcli.engine.loop import Engine
from sftcli.errors import UserError
from sftcli.model import (
    build_model,
    embedded_minilm_dir,
    load_tokenizer,
    model_location,
    pool,
    tokenizer_fingerprint,
    with_max_length,
)
from sftcli.onnx_export import OnnxClassifier
from sftcli.speedups import malloc

__all__ = [
    "DataBundle", "DataConfig", "OnnxClassifier", "DistEnv", "Encoded", "Engine", "LossConfig", "ModelConfig", "OptimConfig",
    "StrategyConfig", "TrainConfig", "TrainerConfig", "UserError", "build_model", "compose_train", "embedded_minilm_dir", "encode",
    "listed_checkpoints", "load_data", "load_model", "load_tokenizer", "load_weights", "local_env", "malloc", "model_location",
    "parse_train", "pool", "predict_probs", "read_run_config", "timing", "to_plain", "tokenizer_fingerprint", "trec6_path",
]


def compose_train(overrides: list[str]) -> TrainConfig:
    """The typed config of `sft train OVERRIDES` (its groups, recipes and keys composed once, as the command
    line composes them, and validated); raises UserError with the command line's message."""
    from sftcli.hydra_app import App
    from sftcli.precheck import check_composed

    with App("train") as app:
        composed = app.compose(list(overrides), multirun=False, configure_logging=False)
        # The overrides as the command line gives them: a key given there is a choice (trainer.epochs with
        # a recipe's trainer.max_steps), as `sft train` validates it.
        return check_composed("train", composed, multirun=False,
                              prepare=lambda job, _dir: with_max_length(parse_train(job, list(overrides)))).config


def read_run_config(run_dir: Path) -> TrainConfig:
    """The typed config a finished run recorded (run_dir/config.yaml), without its resume key."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(Path(run_dir) / "config.yaml")
    raw.resume = None
    return parse_train(raw)


def local_env(cfg: TrainConfig) -> DistEnv:
    """One process on the config's device (trainer.device; auto means the CPU here), no process group."""
    device = cfg.trainer.device if cfg.trainer.device != "auto" else "cpu"
    return DistEnv(device=torch.device(device))
