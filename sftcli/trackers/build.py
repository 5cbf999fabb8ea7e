"""From the config to the started trackers (rank 0), and the check that their packages are installed.

`trainer.report_to` names the trackers (the Hugging Face Trainer's key and names); `trainer.tensorboard
=true` adds tensorboard. :class:`Trackers` passes every metrics event on to each of them.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sftcli.config import TrainConfig, TrainerConfig, to_plain
from sftcli.errors import ConfigError
from sftcli.trackers.base import RunFacts, Tracker, read_state, scalars, write_state

log = logging.getLogger("sft")

# name -> (the modules it imports, the sftcli extra and the plain pip package that provide them).
# MLflow's local store is SQLite, through SQLAlchemy and Alembic (in `mlflow`, not in `mlflow-skinny`).
PACKAGES = {
    "tensorboard": (("tensorboard",), "tensorboard", "tensorboard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow", "mlflow"),
    "wandb": (("wandb",), "wandb", "wandb"),
}


def tracker_names(tc: TrainerConfig) -> list[str]:
    """The trackers to start, in order: trainer.report_to, and tensorboard for trainer.tensorboard=true."""
    names = list(tc.report_to)
    if tc.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def check_installed(tc: TrainerConfig) -> None:
    """Each named tracker's package is importable, or ConfigError naming the pip command; checked before
    any model or data loading, without importing the packages."""
    for name in tracker_names(tc):
        modules, extra, package = PACKAGES[name]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            key = "trainer.report_to" if name in tc.report_to else "trainer.tensorboard=true"
            which = "" if missing == [package] else f" (missing: {', '.join(missing)})"
            raise ConfigError(f"{key}: {name} needs the {package} package{which}: pip install 'sftcli[{extra}]' "
                              f"(or: pip install {package})")


def _tracker(name: str) -> Tracker:
    # Each module imports its package only when its tracker starts.
    if name == "tensorboard":
        from sftcli.trackers.tensorboard import TensorBoardTracker

        return TensorBoardTracker()
    if name == "mlflow":
        from sftcli.trackers.mlflow import MlflowTracker

        return MlflowTracker()
    from sftcli.trackers.wandb import WandbTracker

    return WandbTracker()


def sweep_dir(run_dir: Path) -> Path | None:
    """The sweep dir of a Hydra multirun job: the nearest folder above the run dir holding Hydra's
    multirun.yaml (the job's .hydra/hydra.yaml says MULTIRUN), else None."""
    from sftcli.report import read_yaml

    hydra_cfg = read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    if (hydra_cfg.get("hydra") or {}).get("mode") != "MULTIRUN":
        return None
    return next((p for p in run_dir.parents if (p / "multirun.yaml").is_file()), None)


def run_facts(cfg: TrainConfig, run_dir: Path, resumed_step: int | None) -> RunFacts:
    run_dir, root = run_dir.resolve(), Path(cfg.run_root).expanduser().resolve()
    sweep = sweep_dir(run_dir)
    name = run_dir.relative_to(root).as_posix() if run_dir.is_relative_to(root) else run_dir.name
    return RunFacts(run_dir=run_dir, run_root=root, name=name, group=sweep.name if sweep else None,
                    resumed_step=resumed_step, state=read_state(run_dir))


class Trackers:
    """The started trackers of a run; MetricsWriter hands it every event (rank 0 only)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def write(self, step: int, values: dict[str, Any]) -> None:
        numbers = scalars(values)
        if numbers:
            for tracker in self.trackers:
                tracker.log(step, numbers)

    def finish(self, summary: dict[str, Any] | None, status: str) -> None:
        """Close every tracker once: the final test/validation metrics of a completed run's summary."""
        final = scalars({k: v for k, v in (summary or {}).items() if k.startswith(("test/", "val/"))})
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish(final, status)

    def close(self) -> None:
        # A run that ended without finish() (an error outside the loop) is a failed one.
        self.finish(None, "failed")


def build_trackers(cfg: TrainConfig, run_dir: Path, resumed_step: int | None = None) -> Trackers:
    """Start the trackers the config names (none: an empty Trackers); their ids go to trackers.json so
    that a resumed run continues the same tracker runs."""
    names = tracker_names(cfg.trainer)
    if not names:
        return Trackers([])
    check_installed(cfg.trainer)
    facts = run_facts(cfg, run_dir, resumed_step)
    config = to_plain(cfg)
    state = dict(facts.state)
    started: list[Tracker] = []
    try:
        for name in names:
            tracker = _tracker(name)
            saved = tracker.start(config, facts)
            started.append(tracker)
            if saved:
                state[name] = saved
    except BaseException:
        Trackers(started).finish(None, "failed")
        raise
    write_state(facts.run_dir, state)
    log.info("trackers: %s", ", ".join(names))
    return Trackers(started)
