"""The keys of the pseudo-label consistency term (sftcli/objectives/consistency.py)."""

from __future__ import annotations

from typing import Any

from sftcli.fields import ObjectiveKeys, key


class ConsistencyKeys(ObjectiveKeys):
    consistency_weight: float = key(0.0, "weight of a pseudo-label term on unlabeled texts: confident no-dropout "
                                         "predictions as targets for the dropout view", ge=0)
    consistency_threshold: float = key(0.9, "minimum confidence of a pseudo-label", ge=0, lt=1)

    def unlabeled_keys(self) -> list[str]:
        return ["consistency_weight"] if self.consistency_weight > 0 else []

    def drop_unlabeled(self, run: Any, notes: list[str]) -> None:
        self.consistency_weight = 0.0
