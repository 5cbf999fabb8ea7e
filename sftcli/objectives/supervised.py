"""L_sup: cross-entropy of the classifier on the labeled rows (train/loss_sup)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftcli import faults
from sftcli.losses import supervised_loss
from sftcli.objectives.base import Contribution, Objective, StepView, Term

if TYPE_CHECKING:
    from sftcli.engine.loop import Engine


class Supervised(Objective):
    name = "sup"

    def contribute(self, view: StepView, engine: Engine) -> Contribution:
        batch = view.batch
        if not batch.has_labeled:
            return Contribution()
        # Mean over the local rows: every rank has the same number, so DDP's averaging gives the global mean.
        value = faults.poison("sup", supervised_loss(view.labeled_logits, batch.labels), batch.step)
        return Contribution(terms=[Term("sup", value)])
