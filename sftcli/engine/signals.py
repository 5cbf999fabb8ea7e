"""The signals that stop a run (SIGTERM, SIGINT, and submitit's preemption signal): while the loop runs, a
signal only counts; the loop finishes its step, agrees with the other ranks, saves, then exits 75."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from sftcli import cluster

log = logging.getLogger("sft")


class StopSignals:
    """Counts the stop signals received while installed (the step they arrive in: `current_step()`)."""

    def __init__(self, current_step: Callable[[], int]) -> None:
        self.received = 0
        self._current_step = current_step
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # SIGTERM and SIGINT, and in a submitit job submitit's own preemption signal (sftcli/cluster.py).
        for sig in cluster.stop_signals():
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            cluster.note_stop_signal(signum)
            log.warning("received %s: finishing step %d, saving a checkpoint, then exiting", name,
                        self._current_step() + 1)
        else:
            log.warning("received %s again: already stopping (the checkpoint save is not interrupted)", name)
