"""What one optimizer step hands the objectives, and what they may hand back: the engine's side of the
contract with sftcli/objectives/ (each objective reads these types and never the engine itself).

Each step, the engine draws the batches the strategy asks for (a StepBatch), runs one forward, and asks
every objective for its Contribution from a read-only StepView. Between steps an objective reads a RunView
and returns Requests (Restart, SetTrainPrior, Report) that the engine carries out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sftcli.data import TokenRows
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
    # The pseudo-labels of the GLOBAL unlabeled batch, in unlabeled_index's order (-1: none), as the
    # objective that keeps them has them now (host)
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
    predict: Callable[[TokenRows, bool], np.ndarray]


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
