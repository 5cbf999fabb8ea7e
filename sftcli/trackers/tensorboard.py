"""TensorBoard event files in the run dir, next to metrics.jsonl (`trainer.report_to=tensorboard`, or
`trainer.tensorboard=true`).

For `tensorboard --logdir runs/`, where each run dir shows up as one run. torch.utils.tensorboard (and
the `tensorboard` package it needs) is imported only when the tracker starts.
"""

from __future__ import annotations

from typing import Any

from sftcli.trackers.base import RunFacts


class TensorBoardTracker:
    """Scalars of each metrics event as TensorBoard events under the run dir.

    On resume, TensorBoard is told the step training continues from (`purge_step`): it then hides the
    events the earlier attempt wrote after it, as metrics.jsonl's truncate_after() drops them, so curves
    never double back."""

    name = "tensorboard"

    def __init__(self, flush_secs: int = 10) -> None:
        self.flush_secs = flush_secs
        self._writer: Any = None

    def start(self, config: dict[str, Any], facts: RunFacts) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        purge_step = None if facts.resumed_step is None else facts.resumed_step + 1
        self._writer = SummaryWriter(log_dir=str(facts.run_dir), purge_step=purge_step, flush_secs=self.flush_secs)
        return {}

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, number in values.items():
            self._writer.add_scalar(key, number, global_step=int(step))

    def finish(self, final: dict[str, float], status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
