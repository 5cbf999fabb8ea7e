"""After Hydra, in the parent process: make the run dir, then run 1 worker in-process or N through
torch.distributed's elastic launcher. Hydra never runs inside a worker: workers read config.yaml."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from sftcli import dist
from sftcli.checkpoint import probe_writable
from sftcli.config import TrainConfig, parse_train
from sftcli.errors import EXIT_USER_ERROR, NonFiniteError, Preempted, UserError
from sftcli.runlog import setup_logging

log = logging.getLogger("sft")


class WorkersFailed(Exception):
    """One or more worker processes failed; carries the exit code to report."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def write_run_config(cfg: Any, run_dir: Path) -> None:
    """config.yaml: the resolved config (without Hydra's own section), written before training starts."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    tmp.replace(run_dir / "config.yaml")


def train_in_run_dir(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Validate, write config.yaml, launch the workers; returns the run's summary."""
    external = dist.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if external:
        # Under an external torchrun the world size is torchrun's; record it so checks and resume see it.
        cfg.trainer.nproc = int(os.environ.get("WORLD_SIZE", "1"))
    tc: TrainConfig = parse_train(cfg)  # before any model or data loading
    probe_writable(run_dir)
    write_run_config(cfg, run_dir)
    setup_logging(run_dir, is_main=True)
    if external:
        # External torchrun: this is rank 0 (the others wait in follow_external_launch); share the run dir.
        env = dist.init(tc.trainer.device, tc.trainer.dist_timeout_s)
        dist.broadcast_object(env, str(run_dir))
        return worker_main(str(run_dir))
    if tc.trainer.nproc == 1:
        from sftcli.engine import run_worker

        return run_worker(str(run_dir))
    log.info("launching %d worker processes (torch.distributed elastic launch)", tc.trainer.nproc)
    if "OMP_NUM_THREADS" not in os.environ:
        # N CPU workers each using every core oversubscribe the machine (several times slower); share
        # the cores out as torchrun does. Workers inherit this environment.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // tc.trainer.nproc))
    try:
        results = dist.launch_workers(worker_main, (str(run_dir),), tc.trainer.nproc, run_id=run_dir.name)
    except Exception as exc:
        failures = dist.worker_failures(exc)
        if failures is None:
            raise
        codes = [code for _, code, _ in failures]
        # The most telling exit code: a user error or preemption wins over a peer's collateral failure.
        for wanted in (EXIT_USER_ERROR, Preempted.exit_code, NonFiniteError.exit_code):
            if wanted in codes:
                code = wanted
                break
        else:
            code = codes[0] if codes and codes[0] > 0 else 1
        lines = "; ".join(f"rank {r} exited with {c}" + (f": {m}" if m and m != "<N/A>" else "")
                          for r, c, m in failures)
        raise WorkersFailed(f"worker processes failed ({lines})", code) from None
    return results[0]


def follow_external_launch() -> int:
    """A torchrun rank other than 0: receive the run dir from rank 0, then train as a worker."""
    env = dist.init("auto", 600)
    run_dir = dist.broadcast_object(env, None)
    try:
        worker_main(run_dir)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def worker_main(run_dir: str) -> dict[str, Any]:
    """A worker process: known failures end with their own exit code and one message, no traceback."""
    from sftcli.engine import run_worker

    try:
        return run_worker(run_dir)
    except (UserError, NonFiniteError, Preempted) as exc:
        if not dist.launched_by_torchrun():
            raise  # in-process: the CLI reports it
        rank = os.environ.get("RANK", "0")
        print(f"sft: error (rank {rank}): {exc}" if not isinstance(exc, Preempted) else f"sft: {exc}",
              file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


def selection_value(summary: dict[str, Any]) -> float | None:
    value = summary.get("select_value")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


