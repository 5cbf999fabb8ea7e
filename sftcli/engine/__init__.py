"""The training engine: the builder (build.py), the loop (loop.py), checkpoints (state.py), batches,
named metrics and the progress display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftcli import dist
from sftcli.engine.build import cache_root
from sftcli.engine.loop import Engine
from sftcli.engine.state import seed_everything

__all__ = ["Engine", "cache_root", "run_worker", "seed_everything"]


def run_worker(run_dir: str) -> dict[str, Any]:
    """Entry point of every worker process: read the run's config, train, return the summary."""
    from omegaconf import OmegaConf

    from sftcli.config import parse_train
    from sftcli.runlog import setup_logging

    path = Path(run_dir)
    cfg = parse_train(OmegaConf.load(path / "config.yaml"))
    env = dist.init(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    setup_logging(path, env.is_main, env.rank)
    try:
        engine = Engine(cfg, path, env)
        engine.setup()
        return engine.train()
    finally:
        dist.close()
