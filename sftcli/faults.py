"""Fault injection for the reliability tests, driven by environment variables (no effect when unset).

SFT_TEST_SIGNAL_AT_STEP=N[:RANK]   send SIGTERM to this process when step N (1-based) starts
SFT_TEST_KILL_AT_STEP=N[:RANK]     SIGKILL this process when step N starts (a crash mid-run)
SFT_TEST_NAN_AT_STEP=N[+][:TERM]   make loss term TERM (con, default; or sup) NaN at step N (N+ = from N on)
SFT_TEST_SAVE_PAUSE=POINT:SECONDS[:STEP]  sleep inside a checkpoint save (see checkpoint._test_pause)
SFT_TEST_DISK_FULL_AT_SAVE=N       the checkpoint save of step N fails as on a full disk (ENOSPC)
SFT_TEST_DISK_FREE=BYTES           report this much free space on the run's disk
SFT_TEST_STEP_DELAY=SECONDS        sleep this long as each step starts (a test's signal then lands mid-run)
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path

import torch


def _spec(name: str) -> list[str] | None:
    value = os.environ.get(name)
    return value.split(":") if value else None


def _rank_matches(parts: list[str], rank: int) -> bool:
    return len(parts) < 2 or int(parts[1]) == rank


def at_step_start(step: int, rank: int) -> None:
    """Called when step `step` (1-based) starts."""
    delay = _spec("SFT_TEST_STEP_DELAY")
    if delay:
        time.sleep(float(delay[0]))
    sig = _spec("SFT_TEST_SIGNAL_AT_STEP")
    if sig and int(sig[0]) == step and _rank_matches(sig, rank):
        os.kill(os.getpid(), signal.SIGTERM)
    kill = _spec("SFT_TEST_KILL_AT_STEP")
    if kill and int(kill[0]) == step and _rank_matches(kill, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def poison(term: str, value: torch.Tensor, step: int) -> torch.Tensor:
    """The loss term, or NaN when SFT_TEST_NAN_AT_STEP asks for it at this step."""
    spec = _spec("SFT_TEST_NAN_AT_STEP")
    if not spec:
        return value
    from_on = spec[0].endswith("+")
    at = int(spec[0].rstrip("+"))
    wanted = spec[1] if len(spec) > 1 else "con"
    if term == wanted and (step == at or (from_on and step >= at)):
        return value * float("nan")
    return value


def disk_full_at_save(step: int) -> None:
    """Raise ENOSPC inside the save of step `step` when SFT_TEST_DISK_FULL_AT_SAVE asks for it."""
    spec = _spec("SFT_TEST_DISK_FULL_AT_SAVE")
    if spec and int(spec[0]) == step:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def disk_free(path: Path) -> int:
    """Free bytes on the disk that holds `path` (SFT_TEST_DISK_FREE overrides it)."""
    spec = _spec("SFT_TEST_DISK_FREE")
    return int(spec[0]) if spec else shutil.disk_usage(path).free

