"""The keys of the seed's InfoNCE term (sftcli/objectives/contrastive.py): loss.weight and loss.tau (the
command line's `lambda` and `tau`), the positive, the negatives and the projection."""

from __future__ import annotations

from typing import Any, Literal

from sftcli.fields import Checks, ObjectiveKeys, key


class ContrastiveKeys(ObjectiveKeys):
    weight: float | None = key(None, "lambda: weight of L_con in L = L_sup + lambda * L_con; set by "
                                     "+strategy=..., an error without a strategy", ge=0)
    tau: float | None = key(None, "InfoNCE temperature of the cosine similarities; set by +strategy=..., an error "
                                  "without a strategy", gt=0)
    positive: Literal["pretrained", "dropout"] = key(
        "pretrained", "the positive of each text: its frozen pretrained representation (the seed's term) | dropout "
                      "(SimCSE: the same text through the trained model under a second dropout draw, no gradient)")
    negatives: Literal["finetuned", "pretrained", "none"] = key(
        "finetuned", "other texts' fine-tuned reps (finetuned), their frozen reps (pretrained), or none "
                     "(stay-close: (1 - cos(q, p)) / tau)")
    teacher_cache: bool = key(True, "compute the frozen encoder's reps of the unlabeled set once (disk cache) "
                                    "instead of every step")
    projection: Literal["none", "mlp"] = key(
        "none", "none (the term reads the pooled states) | mlp (a residual MLP head between them and the term, "
                "identity at the start)")
    mask_same_class: bool = key(False, "drop negatives that the classifier assigns to the query's class")
    rampup_steps: int = key(0, "ramp lambda linearly from 0 over this many steps (0 = full weight from the start)",
                            ge=0)

    def check_run(self, run: Any, checks: Checks) -> None:
        if run.strategy is None:
            for alias, value in (("lambda", self.weight), ("tau", self.tau)):
                checks.require(value is None, alias, "has no effect without a strategy: add +strategy=mix or "
                               "+strategy=alternate" + (" (or drop lambda for the supervised baseline)"
                                                        if alias == "lambda" else ""))
        else:
            checks.require(self.weight is not None, "lambda", "is required with a strategy")
            checks.require(self.tau is not None, "tau", "is required with a strategy")

    def drop_unlabeled(self, run: Any, notes: list[str]) -> None:
        self.weight = self.tau = None
