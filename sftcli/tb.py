"""TensorBoard event files in the run dir, next to metrics.jsonl (`trainer.tensorboard=true`, rank 0).

metrics.jsonl stays the record of a run; this is a mirror of its numeric values for `tensorboard --logdir
runs/`, where each run dir shows up as one run. torch.utils.tensorboard (and the `tensorboard` package it
needs) is imported only when enabled, so runs without it pay nothing and need nothing.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from sftcli.errors import ConfigError

INSTALL_HINT = "pip install 'tensorboard>=2.15' (or: pip install -e '.[tensorboard]')"


def _scalar(value: Any) -> float | None:
    """A plain number (or a 0-d numpy/torch value) as float; anything else (paths, strings, bools, lists,
    None) is not a TensorBoard scalar."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        out = item()
        return float(out) if isinstance(out, numbers.Real) and not isinstance(out, bool) else None
    return None


class TensorBoardWriter:
    """Scalars of each metrics event as TensorBoard events under `run_dir` (a no-op when disabled).

    `purge_step`: on resume, the step training continues from; TensorBoard then hides events the earlier
    attempt wrote after it, as metrics.jsonl's truncate_after() drops them, so curves never double back.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, purge_step: int | None = None, flush_secs: int = 10
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises ImportError when the tensorboard package is missing
            raise ConfigError(
                f"trainer.tensorboard=true needs the tensorboard package: {INSTALL_HINT} ({exc})"
            ) from exc
        self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step, flush_secs=flush_secs)

    def write(self, step: int, values: dict[str, Any]) -> int:
        """Log the numeric values at `step`; returns how many were written. NaN/inf are kept: a diverging
        loss should be visible in TensorBoard too."""
        if self._writer is None:
            return 0
        n = 0
        for key, value in values.items():
            number = _scalar(value)
            if number is None or key == "step":
                continue
            self._writer.add_scalar(key, number, global_step=int(step))
            n += 1
        return n

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
