"""Every objective a run can train with, one line each: the term's name (train/loss_NAME), what it is
(for logs and messages), its keys (the loss.* group is assembled from them) and the module that builds
it for a run (its `build(ctx)`, imported only when a run builds its objectives).

Adding an objective: its module in this package (an Objective and `build`), its keys beside it (a module
of its own, light, because the config and `--help` must not import torch), and one line in OBJECTIVES.
The schema, `sft train --help`, the run's validation, the engine, its logs and progress bar read it from
here. The order is the order in which the terms are summed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import create_model, model_validator

from sftcli.fields import Checks, Group, ObjectiveKeys, key
from sftcli.objectives.consistency_keys import ConsistencyKeys
from sftcli.objectives.contrastive_keys import ContrastiveKeys
from sftcli.objectives.self_training_keys import SelfTrainingKeys
from sftcli.objectives.supcon_keys import SupConKeys
from sftcli.objectives.supervised_keys import SupervisedKeys


@dataclass(frozen=True)
class Entry:
    name: str  # the term: train/loss_NAME
    title: str  # what the term is, in logs and messages
    keys: type[ObjectiveKeys]  # its loss.* keys
    module: str  # the module whose build(ctx) makes the objective (None: the run leaves it out)

    def build(self, ctx: Any) -> Any:
        return importlib.import_module(self.module).build(ctx)


OBJECTIVES: list[Entry] = [
    Entry("sup", "cross-entropy", SupervisedKeys, "sftcli.objectives.supervised"),
    Entry("supcon", "supervised contrastive", SupConKeys, "sftcli.objectives.supcon"),
    Entry("con", "InfoNCE", ContrastiveKeys, "sftcli.objectives.contrastive"),
    Entry("cons", "consistency", ConsistencyKeys, "sftcli.objectives.consistency"),
    Entry("st", "self-training", SelfTrainingKeys, "sftcli.objectives.self_training"),
]


class InputNoiseKeys(Group):
    """Keys of the loss group that belong to no one objective: the input noise of the training forward
    (sftcli/engine/batches.py), which every term on those rows sees."""

    unlabeled_mask_prob: float = key(0.0, "input noise: replace each token of the unlabeled texts by [MASK] with "
                                          "this probability in the training forward", ge=0, lt=1)
    labeled_mask_prob: float = key(0.0, "the same input noise on the labeled texts (an augmentation of the few "
                                        "labels: each step sees them with other tokens masked)", ge=0, lt=1)


def loss_config(module: str) -> type[Group]:
    """The `loss` group: every registered objective's keys in registry order, then the input noise.
    `module`: where the class is bound as LossConfig (so that a pickled config, as spawned workers get it,
    finds its class)."""
    def check_keys(loss: Any) -> Any:
        # One validator for the whole group, so that every objective's problems are reported together.
        checks = Checks()
        for entry in OBJECTIVES:
            entry.keys.check_keys(loss, checks)
        checks.raise_if_any()
        return loss

    # pydantic lists the fields of the last base first: the bases go in reverse.
    return create_model("LossConfig", __base__=(InputNoiseKeys, *reversed([e.keys for e in OBJECTIVES])),
                        __module__=module, __validators__={"_check_keys": model_validator(mode="after")(check_keys)})


def term_title(name: str) -> str:
    """A term as logs and messages name it: "loss_st (self-training)"."""
    titles = {e.name: e.title for e in OBJECTIVES}
    return f"loss_{name} ({titles[name]})" if name in titles else name
