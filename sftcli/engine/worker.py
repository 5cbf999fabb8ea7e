"""Entry point of every worker process (one per rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftcli import dist
from sftcli.config import TrainConfig
from sftcli.engine.loop import Engine


def run_worker(run_dir: str, cfg: TrainConfig) -> dict[str, Any]:
    """Entry point of every worker process: train with the typed config the parent validated (the CLI
    composes and validates once; config.yaml in the run dir is the record, not re-read here)."""
    from sftcli.runlog import setup_logging

    path = Path(run_dir)
    env = dist.init(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    setup_logging(path, env.is_main, env.rank)
    try:
        engine = Engine(cfg, path, env)
        engine.setup()
        return engine.train()
    finally:
        dist.close()
