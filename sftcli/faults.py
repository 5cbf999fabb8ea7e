"""Test-only hooks: fault injection and batch recording for the reliability tests (no effect when unset).

The tests drive the real CLI in a subprocess, so they ask for hooks through environment variables. The
environment is read once, when this module is first imported (every worker process imports it anew),
into a frozen :class:`Hooks`; the training step and the checkpoint save then only test a field of it, so
with no hook set each call is a no-op that touches no environment. In-process tests register hooks with
:func:`install`.

SFT_TEST_SIGNAL_AT_STEP=N[:RANK]   send SIGTERM to this process when step N (1-based) starts
SFT_TEST_KILL_AT_STEP=N[:RANK]     SIGKILL this process when step N starts (a crash mid-run)
SFT_TEST_NAN_AT_STEP=N[+][:TERM]   make loss term TERM (con, default; or sup) NaN at step N (N+ = from N on)
SFT_TEST_SAVE_PAUSE=POINT:SECONDS[:STEP]  sleep inside a checkpoint save (see save_pause)
SFT_TEST_SAVE_PAUSE_MARKER=FILE    written with the point's name when that pause starts
SFT_TEST_DISK_FULL_AT_SAVE=N       the checkpoint save of step N fails as on a full disk (ENOSPC)
SFT_TEST_DISK_FREE=BYTES           report this much free space on the run's disk
SFT_TEST_RECORD_IDS=FILE           rank 0 appends every consumed global batch's example ids (see record_batch)
SFT_TEST_STEP_DELAY=SECONDS        sleep this long as each step starts (a test's signal then lands mid-run)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class AtStep:
    """Step N (1-based) on one rank, or on every rank when `rank` is None."""

    step: int
    rank: int | None = None

    def matches(self, step: int, rank: int) -> bool:
        return self.step == step and (self.rank is None or self.rank == rank)


@dataclass(frozen=True)
class NanAt:
    """Loss term `term` made NaN at `step`, or from `step` on."""

    step: int
    from_on: bool = False
    term: str = "con"

    def matches(self, term: str, step: int) -> bool:
        return term == self.term and (step == self.step or (self.from_on and step >= self.step))


@dataclass(frozen=True)
class SavePause:
    """A sleep at `point` of a checkpoint save (of `step` only, when set), announced in `marker`."""

    point: str
    seconds: float
    step: int | None = None
    marker: str | None = None


@dataclass(frozen=True)
class Hooks:
    """The test hooks of this process; the default, all None, is no hook at all."""

    signal_at_step: AtStep | None = None
    kill_at_step: AtStep | None = None
    nan_at_step: NanAt | None = None
    save_pause: SavePause | None = None
    disk_full_at_save: int | None = None
    disk_free: int | None = None
    record_ids: str | None = None
    step_delay: float | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Hooks:
        """The hooks the SFT_TEST_* variables of `environ` ask for (an empty value is unset)."""

        def spec(name: str) -> list[str] | None:
            value = environ.get(name)
            return value.split(":") if value else None

        def at_step(name: str) -> AtStep | None:
            parts = spec(name)
            return None if parts is None else AtStep(int(parts[0]), int(parts[1]) if len(parts) > 1 else None)

        nan = spec("SFT_TEST_NAN_AT_STEP")
        pause = spec("SFT_TEST_SAVE_PAUSE")
        disk_full = spec("SFT_TEST_DISK_FULL_AT_SAVE")
        disk_free = spec("SFT_TEST_DISK_FREE")
        return cls(
            signal_at_step=at_step("SFT_TEST_SIGNAL_AT_STEP"),
            kill_at_step=at_step("SFT_TEST_KILL_AT_STEP"),
            nan_at_step=None if nan is None else NanAt(int(nan[0].rstrip("+")), nan[0].endswith("+"),
                                                       nan[1] if len(nan) > 1 else "con"),
            save_pause=None if pause is None else SavePause(pause[0], float(pause[1]),
                                                            int(pause[2]) if len(pause) > 2 else None,
                                                            environ.get("SFT_TEST_SAVE_PAUSE_MARKER") or None),
            disk_full_at_save=None if disk_full is None else int(disk_full[0]),
            disk_free=None if disk_free is None else int(disk_free[0]),
            record_ids=environ.get("SFT_TEST_RECORD_IDS") or None,
            step_delay=float(environ["SFT_TEST_STEP_DELAY"]) if environ.get("SFT_TEST_STEP_DELAY") else None,
        )


_hooks = Hooks.from_environ(os.environ)


def hooks() -> Hooks:
    """This process's hooks."""
    return _hooks


def install(new: Hooks) -> Hooks:
    """Make `new` this process's hooks (for in-process tests); returns the previous ones to restore."""
    global _hooks
    old, _hooks = _hooks, new
    return old


def at_step_start(step: int, rank: int) -> None:
    """Called when step `step` (1-based) starts."""
    h = _hooks
    if h.step_delay is not None:
        time.sleep(h.step_delay)
    if h.signal_at_step is not None and h.signal_at_step.matches(step, rank):
        os.kill(os.getpid(), signal.SIGTERM)
    if h.kill_at_step is not None and h.kill_at_step.matches(step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def poison(term: str, value: torch.Tensor, step: int) -> torch.Tensor:
    """The loss term, or NaN when SFT_TEST_NAN_AT_STEP asks for it at this step."""
    nan = _hooks.nan_at_step
    if nan is not None and nan.matches(term, step):
        return value * float("nan")
    return value


def record_batch(step: int, stream: str, ids: np.ndarray) -> None:
    """Append one consumed global batch (its example ids) to the SFT_TEST_RECORD_IDS file, so tests can
    check that resume neither skips nor repeats an example in either stream."""
    path = _hooks.record_ids
    if path is None:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": step, "stream": stream, "ids": ids.tolist()}) + "\n")


def save_pause(point: str, step: int) -> None:
    """Sleep at `point` of the save of `step` when SFT_TEST_SAVE_PAUSE asks for it, so a test can kill the
    process there. Points: files (after the first file is hashed), manifest (before it is written),
    rename (before the commit)."""
    pause = _hooks.save_pause
    if pause is None or pause.point != point or (pause.step is not None and pause.step != step):
        return
    if pause.marker:
        Path(pause.marker).write_text(point)
    time.sleep(pause.seconds)


def disk_full_at_save(step: int) -> None:
    """Raise ENOSPC inside the save of step `step` when SFT_TEST_DISK_FULL_AT_SAVE asks for it."""
    if _hooks.disk_full_at_save == step:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def disk_free(path: Path) -> int:
    """Free bytes on the disk that holds `path` (SFT_TEST_DISK_FREE overrides it)."""
    free = _hooks.disk_free
    return free if free is not None else shutil.disk_usage(path).free
