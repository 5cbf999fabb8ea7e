"""What a run writes besides checkpoints: metrics.jsonl, train.log, the console (rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("sft")


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/inf: write them as null so every line stays parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Append-only metrics.jsonl: one JSON object per event, each with "step"."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.mirror: Any = None  # the run's trackers (sftcli.trackers.Trackers): the same events

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self.mirror is not None:
            self.mirror.write(step, values)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None

    def truncate_after(self, step: int) -> int:
        """Drop events after `step` (a resumed run re-logs them); returns how many were dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write
                dropped += 1
                continue
            if int(record.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)
        return dropped


def write_run_config(run_dir: Path, cfg: Any, resolved: dict[str, Any]) -> None:
    """config.yaml, the run's record, written once by rank 0 before training: the validated config as the
    command line composes it (sftcli/config: to_record), with `resolved` (dotted key -> value) set to what
    only the run resolves (the steps of trainer.epochs)."""
    import yaml

    from sftcli.config import to_record

    record = to_record(cfg, resolved)
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    tmp.replace(run_dir / "config.yaml")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


# The rich console of the progress bar while one is live (see bar_console).
_live: dict[str, Any] = {"console": None}


class _ConsoleHandler(logging.StreamHandler):
    """The console log. While a progress bar is live, its lines go through the bar's rich console, which
    prints them above the bar; written to the terminal directly they would land on the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        console = _live["console"]
        if console is None:
            super().emit(record)
            return
        try:
            console.print(self.format(record), markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def bar_console() -> Any:
    """A rich console on stderr (where the log goes) for a progress bar; the console log writes through it
    until :func:`release_console`."""
    from rich.console import Console

    console = Console(stderr=True)
    _live["console"] = console
    return console


def release_console() -> None:
    _live["console"] = None


def setup_logging(run_dir: Path | None, is_main: bool, rank: int = 0) -> None:
    """Console (and, on rank 0, train.log in the run dir) handlers for the "sft" logger.

    The console shows what a user acts on (INFO); train.log also keeps the DEBUG lines (cache paths and
    hits, speed levers that do not apply), which SFT_DEBUG=1 shows on the console too."""
    logger = logging.getLogger("sft")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    console = _ConsoleHandler(sys.stderr)
    prefix = "" if is_main else f"[rank {rank}] "
    console.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    verbose = os.environ.get("SFT_DEBUG", "") not in ("", "0")
    console.setLevel(logging.WARNING if not is_main else logging.DEBUG if verbose else logging.INFO)
    logger.addHandler(console)
    if is_main and run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh.setLevel(logging.DEBUG)
        logger.addHandler(fh)


def format_metrics(values: dict[str, Any], keys: list[str]) -> str:
    """`name=value` for each of `keys` present, without the key's group (`train/`, `val/`): the line
    already says what it reports. Floats get four significant digits, anything else prints as it is."""
    parts = []
    for key in keys:
        if key in values and values[key] is not None:
            v, name = values[key], key.split("/", 1)[-1]
            parts.append(f"{name}={v:.4g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(parts)


def format_value(value: Any) -> str:
    """A metric for a human line: four decimals, or n/a when there is none."""
    # numbers.Real: Python and numpy floats alike; an int or bool here is not a metric.
    return f"{value:.4f}" if isinstance(value, numbers.Real) and not isinstance(value, int) else "n/a"
