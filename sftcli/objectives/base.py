"""What a training objective is, and what its `build(ctx)` may read. The step types it works with are the
engine's (sftcli/engine/steps.py).

An objective is one term of the training loss (cross-entropy, the seed's InfoNCE, consistency,
self-training, supervised contrastive, ...). Each step, the engine draws the batches the strategy asks
for, runs one forward over them, and asks every objective for its weighted terms and diagnostics. An
objective may keep state (pseudo-labels, a projection head) that goes into checkpoints, train parameters
of its own, and act before a step (self-training re-labels every N steps).

Loss terms are LOCAL: the value one process contributes, scaled so that DDP's gradient averaging over
ranks yields the single-process gradient of the global mean (see each objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sftcli.data import TokenRows
from sftcli.dist import DistEnv
from sftcli.engine.steps import Contribution, Request, RunView, StepBatch, StepView, UnlabeledRows

if TYPE_CHECKING:
    from sftcli.config import TrainConfig


class Objective:
    """Base class: override what the term needs. Names are stable (checkpoint keys, metric names)."""

    name = "objective"
    uses_weak_view = False  # the step computes no-dropout logits of the unlabeled rows for this term
    wants_best_weights = False  # the engine keeps a host copy of the best model so far for this term

    def wants_hidden_states(self, batch: StepBatch) -> bool:
        """Whether this step's forward must return hidden states for this term (the contrastive terms)."""
        return False

    def labels_of(self, index: np.ndarray) -> np.ndarray | None:
        """The pseudo-labels this objective keeps for unlabeled texts `index` (-1: none), for other terms
        to read through the step's batch; None: it keeps none."""
        return None

    def unlabeled_rows(self) -> UnlabeledRows | None:
        """The unlabeled texts this term reads at the coming step; None: none. A mix step draws unlabeled
        rows only when some term reads them (ALL_UNLABELED from any term: the whole set), so a term that is
        off, or not on yet, costs nothing."""
        return None

    def contribute(self, view: StepView) -> Contribution:
        raise NotImplementedError

    def before_step(self, run: RunView) -> list[Request]:
        """Called at the start of every step, before its batches are drawn (run.step = steps done); returns
        what the engine should do (self-training: restart the student, change the prior, report)."""
        return []

    def window_values(self, step: int) -> dict[str, float]:
        """Extra values for the logging window that just ended at `step` (e.g. the weight it used)."""
        return {}

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Parameters this objective trains besides the model's (optimized with them)."""
        return []

    def to_train(self) -> None:
        """Move own modules to the device and wrap them for DDP (after the model is wrapped)."""

    def reset(self) -> None:
        """Back to the initial state of own parameters (a fresh self-training student)."""

    def schedule_period(self) -> int | None:
        """Steps after which the lr schedule restarts (None: one schedule over the run)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class BuildContext:
    """What an objective's `build(ctx)` may read to make the run's objective (sftcli/objectives/build.py)."""

    cfg: TrainConfig
    round_steps: int  # the steps of one self-training round (the run's plan, sftcli/engine/build.py)
    model: torch.nn.Module  # the initial model, before it goes to the device
    unlabeled: TokenRows | None  # the pile's token ids; None when the run trains on labels alone
    hidden_labels: np.ndarray | None  # the pile's true labels where the data has them (diagnostics only)
    pad_id: int
    env: DistEnv
    cache: Path  # the cache root (frozen-encoder representations)
    teacher_key: tuple[str, ...]  # what the frozen encoder's representations depend on
    class_weights: np.ndarray | None = None  # loss.class_weights per class, None: unweighted

    @property
    def uses_unlabeled(self) -> bool:
        """Whether the run trains on the pile (a strategy and unlabeled texts): the terms on it exist."""
        return self.cfg.strategy is not None and self.unlabeled is not None

