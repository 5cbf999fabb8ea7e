"""The keys of the cross-entropy on the labeled texts (sftcli/objectives/supervised.py)."""

from __future__ import annotations

import math
from typing import Literal

from sftcli.fields import Checks, ObjectiveKeys, Text, key


class SupervisedKeys(ObjectiveKeys):
    label_smoothing: float = key(0.0, "label smoothing of the cross-entropy on the labeled texts: this much of "
                                      "each target spread evenly over all classes (HF Trainer's "
                                      "label_smoothing_factor); 0 = one-hot targets", ge=0, lt=1)
    class_weights: Literal["balanced"] | dict[Text, float] | None = key(
        None, "weights of the classes in the cross-entropy and self-training's term (by pseudo-label): null (all 1) | balanced (scikit-learn's: labeled texts / "
              "(classes x texts of the class)) | a weight for every label: loss.class_weights={spam:3,ham:1}")

    def check_keys(self, checks: Checks) -> None:
        if isinstance(self.class_weights, dict):
            for name, weight in self.class_weights.items():
                checks.require(math.isfinite(weight) and weight > 0, "class_weights",
                               f"the weight of label {name!r} is {weight}; a weight must be a number > 0")
