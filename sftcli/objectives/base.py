"""What a training objective is, and what one optimizer step hands it.

An objective is one term of the training loss (cross-entropy, the seed's InfoNCE, consistency,
self-training, supervised contrastive, ...). Each step, the engine draws the batches the strategy asks
for, runs one forward over them, and asks every objective for its weighted terms and diagnostics. An
objective may keep state (pseudo-labels, a projection head) that goes into checkpoints, train parameters
of its own, and act before a step (self-training re-labels every N steps).

Loss terms are LOCAL: the value one process contributes, scaled so that DDP's gradient averaging over
ranks yields the single-process gradient of the global mean (see each objective).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sftcli.data import Encoded
from sftcli.dist import DistEnv


@dataclass
class StepBatch:
    """The inputs of one optimizer step on this process: labeled rows first, then unlabeled rows."""

    step: int  # the step being taken, 1-based
    inputs: dict[str, torch.Tensor]  # on the device; the unlabeled rows with any input noise applied
    n_labeled: int  # local labeled rows (0: an unlabeled-only step)
    labels: torch.Tensor | None  # [n_labeled] on the device
    unlabeled_index: np.ndarray | None  # GLOBAL indices of the step's unlabeled batch (None: no unlabeled rows)
    clean_unlabeled: dict[str, torch.Tensor] | None = None  # the unlabeled rows as read (host), before noise
    global_labels: np.ndarray | None = None  # the labels of the step's whole GLOBAL labeled batch (host)
    # The unlabeled set's pseudo-labels (-1: none) as the objective that keeps them has them now (host)
    pseudo_labels: np.ndarray | None = None

    @property
    def has_labeled(self) -> bool:
        return self.labels is not None

    @property
    def has_unlabeled(self) -> bool:
        return self.unlabeled_index is not None


@dataclass(frozen=True)
class UnlabeledRows:
    """Which unlabeled texts a term reads at the coming step: `index` into the unlabeled set (None: all of
    them). `key` names the subset; a new key starts a new seeded draw order over it (self-training: the
    step of the re-label that chose it)."""

    index: np.ndarray | None = None
    key: int = 0


ALL_UNLABELED = UnlabeledRows()


@dataclass
class StepView:
    """The forward's outputs of one step, shared by the objectives (each slices what it reads), and what
    a term needs of the run to compute itself."""

    batch: StepBatch
    output: Any  # the model's output: logits, and hidden_states when an objective asked for them
    env: DistEnv  # this process's rank, the world size and the device
    precision: str  # the forward's number format (a term's own forward runs under it too)
    model: torch.nn.Module  # the trained classifier (a term may run it again: SimCSE's second dropout view)
    weak_logits: torch.Tensor | None = None  # no-dropout logits of the unlabeled rows, when a term uses them
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def labeled_logits(self) -> torch.Tensor:
        return self.output.logits[: self.batch.n_labeled]

    @property
    def unlabeled_logits(self) -> torch.Tensor:
        """The unlabeled rows' logits of the training forward, in fp32."""
        if "unlabeled_logits" not in self.cache:
            self.cache["unlabeled_logits"] = self.output.logits[self.batch.n_labeled :].float()
        return self.cache["unlabeled_logits"]

    def unlabeled_predictions(self) -> torch.Tensor:
        """The classifier's predicted class of each unlabeled row (from the weak view when there is one)."""
        logits = self.weak_logits if self.weak_logits is not None else self.unlabeled_logits
        return logits.detach().argmax(-1)


@dataclass(frozen=True)
class RunView:
    """What an objective reads of the run between steps (before_step): facts, and the one action it may
    take itself, asking the engine for the logits of a text set."""

    step: int  # optimizer steps done
    env: DistEnv
    labeled_prior: np.ndarray  # the labeled texts' class prior
    train_prior: np.ndarray  # the prior the model trains under now (sftcli/prior.py)
    label_names: list[str]
    best_step: int | None  # the step of the best checkpoint so far
    has_best_weights: bool  # the engine holds the best model's weights (an objective's wants_best_weights)
    # predict(texts, best): the logits of the model as it is, or (best=True) of the best model so far
    predict: Callable[[Encoded, bool], np.ndarray]


# What an objective asks the engine to do between steps (before_step returns them; the engine carries
# them out in order).
@dataclass(frozen=True)
class Restart:
    """Start the trained model over from these weights: objectives reset, a new optimizer state."""

    weights: dict[str, torch.Tensor]


@dataclass(frozen=True)
class SetTrainPrior:
    """The class prior the model trains under from now on (recorded in checkpoints)."""

    prior: np.ndarray


@dataclass(frozen=True)
class Report:
    """Metrics to write at the current step (rank 0), and to the log under `what`."""

    what: str
    values: dict[str, float]


Request = Restart | SetTrainPrior | Report


@dataclass
class Term:
    """One weighted loss term: `weight * value` enters the step's loss; train/loss_<name> logs `value`."""

    name: str
    value: torch.Tensor
    weight: float = 1.0


@dataclass
class Contribution:
    """What an objective adds to a step: its terms, and diagnostics as (numerator, denominator) sums over
    rows (logged as numerator / denominator over the logging window, across ranks)."""

    terms: list[Term] = field(default_factory=list)
    ratios: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Objective:
    """Base class: override what the term needs. Names are stable (checkpoint keys, metric names)."""

    name = "objective"
    uses_weak_view = False  # the step computes no-dropout logits of the unlabeled rows for this term
    wants_best_weights = False  # the engine keeps a host copy of the best model so far for this term

    def wants_hidden_states(self, batch: StepBatch) -> bool:
        """Whether this step's forward must return hidden states for this term (the contrastive terms)."""
        return False

    def labels_for_unlabeled(self) -> np.ndarray | None:
        """The pseudo-labels this objective keeps for the unlabeled set (-1: none), for other terms to read
        through the step's batch; None: it keeps none."""
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
