"""Pseudo-label consistency (FixMatch / UDA style) on the unlabeled rows (train/loss_cons).

The weak view (no dropout, the texts as read) predicts; its confident predictions (at least
loss.consistency_threshold) are the targets of the strong view: the training forward, with dropout and,
with loss.unlabeled_mask_prob, masked tokens. Weight: loss.consistency_weight.
"""

from __future__ import annotations

from sftcli.config import LossConfig
from sftcli.engine.steps import ALL_UNLABELED, Contribution, StepView, Term, UnlabeledRows
from sftcli.losses import consistency_loss
from sftcli.objectives.base import BuildContext, Objective


class Consistency(Objective):
    name = "cons"
    uses_weak_view = True

    def __init__(self, lc: LossConfig):
        self.weight, self.threshold = lc.consistency_weight, lc.consistency_threshold

    def unlabeled_rows(self) -> UnlabeledRows:
        return ALL_UNLABELED

    def contribute(self, view: StepView) -> Contribution:
        batch = view.batch
        if not batch.has_unlabeled or view.weak_logits is None:
            return Contribution()
        total, confident = consistency_loss(view.unlabeled_logits, view.weak_logits, self.threshold)
        # Sum over local rows / global batch, times world size: the global mean after DDP averaging.
        value = total * view.env.world_size / len(batch.unlabeled_index)
        rows = view.unlabeled_logits.new_tensor(float(view.unlabeled_logits.shape[0]))
        return Contribution(terms=[Term("cons", value, self.weight)],
                            ratios={"pseudo_label_rate": (confident, rows)})


def build(ctx: BuildContext) -> Consistency | None:
    if not ctx.uses_unlabeled or ctx.cfg.loss.consistency_weight <= 0:
        return None
    return Consistency(ctx.cfg.loss)
