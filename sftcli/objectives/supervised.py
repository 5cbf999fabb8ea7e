"""L_sup: cross-entropy of the classifier on the labeled rows (train/loss_sup), optionally class-weighted
(loss.class_weights)."""

from __future__ import annotations

import numpy as np
import torch

from sftcli import faults
from sftcli.engine.steps import Contribution, StepView, Term
from sftcli.errors import ConfigError, DataError
from sftcli.losses import supervised_loss
from sftcli.objectives.base import BuildContext, Objective


def class_weights(spec: str | dict[str, float] | None, label_names: list[str], labels: np.ndarray
                  ) -> np.ndarray | None:
    """The weight of each class, in label order, from loss.class_weights: None (unweighted), "balanced"
    (scikit-learn's: n / (classes x count) over the labeled training set `labels`), or a weight for every
    label name."""
    if spec is None:
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        absent = [name for i, name in enumerate(label_names) if not (labels == i).any()]
        if absent:
            raise DataError(f"loss.class_weights=balanced: the labeled set has no text of label(s) "
                            f"{', '.join(map(repr, absent))}, so their weight is undefined; give the weights "
                            "by label name instead")
        return compute_class_weight("balanced", classes=np.arange(len(label_names)), y=labels)
    assert isinstance(spec, dict)
    problems = [f"unknown label {name!r}" for name in spec if name not in label_names]
    problems += [f"no weight for label {name!r}" for name in label_names if name not in spec]
    if problems:
        raise ConfigError(f"loss.class_weights: {'; '.join(problems)} (the labels are {', '.join(label_names)}; "
                          "every label needs a weight)")
    return np.array([float(spec[name]) for name in label_names])


class Supervised(Objective):
    name = "sup"

    def __init__(self, weights: np.ndarray | None = None, smoothing: float = 0.0):
        self.weights = weights  # per class, in label order; None: unweighted
        self.smoothing = smoothing  # loss.label_smoothing
        self._weights_on: torch.Tensor | None = None

    def contribute(self, view: StepView) -> Contribution:
        batch = view.batch
        if not batch.has_labeled:
            return Contribution()
        logits = view.labeled_logits
        if self.weights is None:
            # Mean over the local rows: every rank has the same number, so DDP's averaging gives the global mean.
            value = supervised_loss(logits, batch.labels, smoothing=self.smoothing)
        else:
            if self._weights_on is None:
                self._weights_on = torch.as_tensor(self.weights, dtype=torch.float32, device=logits.device)
            assert batch.global_labels is not None
            total = float(self.weights[batch.global_labels].sum())
            # The weighted mean over the global batch: each rank's share of the weighted sum, scaled by the
            # world size because DDP averages the ranks' gradients.
            value = supervised_loss(logits, batch.labels, self._weights_on, total,
                                    self.smoothing) * view.env.world_size
        value = faults.poison("sup", value, batch.step)
        return Contribution(terms=[Term("sup", value)])


def build(ctx: BuildContext) -> Supervised:
    """The cross-entropy is in every run."""
    return Supervised(ctx.class_weights, ctx.cfg.loss.label_smoothing)
