"""The keys of the supervised contrastive term (sftcli/objectives/supcon.py): loss.supcon_*."""

from __future__ import annotations

from typing import Any

from sftcli.fields import Checks, ObjectiveKeys, key


class SupConKeys(ObjectiveKeys):
    supcon_weight: float = key(0.0, "weight of a supervised contrastive term on the labeled texts (same class = "
                                    "positives; needs no strategy)", ge=0)
    supcon_tau: float = key(0.1, "temperature of that term's cosine similarities", gt=0)
    supcon_unlabeled: bool = key(False, "the supervised contrastive term also takes the unlabeled texts that "
                                        "self-training gave a pseudo-label (their class)")

    def check_run(self, run: Any, checks: Checks) -> None:
        if self.supcon_unlabeled:
            for name in ("supcon_weight", "self_training_weight"):
                checks.require(getattr(run.loss, name) > 0, f"loss.{name}",
                               "must be > 0 with loss.supcon_unlabeled=true (the term's classes for unlabeled "
                               "texts are self-training's pseudo-labels)")

    def drop_unlabeled(self, run: Any, notes: list[str]) -> None:
        self.supcon_unlabeled = False
