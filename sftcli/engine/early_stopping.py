"""Early stopping (trainer.early_stopping_patience): stop after N evaluations in a row without improvement.

The rule is the Hugging Face EarlyStoppingCallback's: an evaluation improves when there is no best yet, or
when it is strictly better than the best before it by more than `threshold`; otherwise the counter goes
up, and training stops once it reaches `patience`. The best so far is the engine's (the one that picks
the best checkpoint), so a non-finite metric never improves. The counter is part of the train state, so
a resumed run stops where the uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class EarlyStopping:
    patience: int | None  # None: off
    threshold: float = 0.0
    counter: int = 0  # evaluations in a row without improvement

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    @property
    def stopped(self) -> bool:
        """Whether training should stop (also right after resuming from the checkpoint of a stop)."""
        return self.patience is not None and self.counter >= self.patience

    def update(self, metric: float, best_before: float | None) -> None:
        """Count one evaluation: `metric`, and the best value before it (None: there is none yet)."""
        if self.patience is None:
            return
        improved = best_before is None or (math.isfinite(metric) and metric > best_before
                                           and abs(metric - best_before) > self.threshold)
        self.counter = 0 if improved else self.counter + 1

    def summary(self) -> dict[str, Any]:
        return {"patience": self.patience, "threshold": self.threshold, "counter": self.counter}

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counter = int(state.get("counter", 0))
