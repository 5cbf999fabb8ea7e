"""The training progress display: a rich bar with live losses on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

from sftcli.runlog import format_metrics

log = logging.getLogger("sft")


class Progress:
    """A rich progress bar with live losses on a terminal; plain periodic lines otherwise."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool):
        self.enabled = enabled and mode != "none"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.bar = None
        if self.enabled and mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            from sftcli.runlog import bar_console

            # On the log's console, so log lines print above the bar instead of onto its line.
            self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[losses]}"), transient=False, console=bar_console())
            self.task = self.bar.add_task("train", total=total, completed=start, losses="")
            self.bar.start()

    def update(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = format_metrics(values, ["train/loss", "train/loss_sup", "train/loss_con", "train/lr",
                                       "perf/samples_per_s"])
        if self.bar is not None:
            self.bar.update(self.task, completed=step, losses=text)
        else:
            log.info("step %d: %s", step, text)

    def close(self) -> None:
        if self.bar is not None:
            from sftcli.runlog import release_console

            self.bar.stop()
            self.bar = None
            release_console()
