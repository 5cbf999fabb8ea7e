"""What every experiment tracker implements, the facts about a run it is told, and the values it logs.

metrics.jsonl stays the record of a run; a tracker mirrors its events. Each one lives in its own module
(tensorboard.py, mlflow.py, wandb.py) and imports its package only when it starts, so a run without
trackers needs none of them.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# Where each tracker keeps what a resumed run needs to continue the same tracker run (its run id).
STATE_FILE = "trackers.json"

# How a run ended, as sftcli/engine/loop.py reports it to the trackers.
STATUSES = ("completed", "preempted", "failed")


@dataclass(frozen=True)
class RunFacts:
    """What a tracker needs to know about the run besides its config.

    run_dir: the run directory (absolute); run_root: the directory that holds the runs (absolute). name: the run's name among its neighbours: its path under
    run_root ("20250101-120000-000001", or "sweeps/20250101-120000-000001/0" for a sweep job). group: the
    sweep's directory name when this run is a job of a Hydra multirun, else None. resumed_step: the step
    training continues from when resumed, else None. state: what trackers.json held for each tracker."""

    run_dir: Path
    run_root: Path
    name: str
    group: str | None
    resumed_step: int | None
    state: dict[str, Any]


class Tracker(Protocol):
    """One experiment tracker: started once per run on rank 0, told every metrics event, finished once."""

    name: str

    def start(self, config: dict[str, Any], facts: RunFacts) -> dict[str, Any]:
        """Open (or, on resume, continue) the tracker's run; returns what to keep in trackers.json to
        continue it later (an empty dict when nothing is needed)."""
        ...

    def log(self, step: int, values: dict[str, float]) -> None:
        """The numeric values of one metrics event, at `step`."""
        ...

    def finish(self, final: dict[str, float], status: str) -> None:
        """Close the tracker's run: `final` holds the final test/validation metrics (empty unless
        completed), `status` one of STATUSES."""
        ...


def scalar(value: Any) -> float | None:
    """A plain number (or a 0-d numpy/torch value) as float; anything else (paths, strings, bools, lists,
    None) is not a metric a tracker plots."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        out = item()
        return float(out) if isinstance(out, numbers.Real) and not isinstance(out, bool) else None
    return None


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The plottable values of a metrics event (NaN and inf kept: a diverging loss should show)."""
    out = {}
    for key, value in values.items():
        number = scalar(value)
        if number is not None and key != "step":
            out[key] = number
    return out


def read_state(run_dir: Path) -> dict[str, Any]:
    """trackers.json of a run dir ({} when absent or unreadable: the trackers then start new runs)."""
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    # Written whole and renamed: a run killed while writing it keeps the previous ids.
    tmp = run_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / STATE_FILE)
