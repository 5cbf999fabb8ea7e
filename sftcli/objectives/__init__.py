"""The training terms, one module each, and the recipe that turns a config into a weighted list of them.

Adding a method: a module here with an :class:`~sftcli.objectives.base.Objective`, its keys in
sftcli/config/schema.py (each with its default and one-line meaning), one line in :func:`build_objectives`, and a
test. The engine needs no change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sftcli import dist
from sftcli.config import TrainConfig
from sftcli.data import Encoded
from sftcli.objectives.base import Contribution, Objective, StepBatch, StepView, Term
from sftcli.objectives.consistency import Consistency
from sftcli.objectives.contrastive import Contrastive
from sftcli.objectives.self_training import SelfTraining
from sftcli.objectives.supcon import SupCon
from sftcli.objectives.supervised import Supervised

__all__ = ["Contribution", "Objective", "StepBatch", "StepView", "Term", "build_objectives"]


def build_objectives(cfg: TrainConfig, round_steps: int, model: torch.nn.Module, unlabeled: Encoded | None,
                     hidden_labels: np.ndarray | None, pad_id: int, env: dist.DistEnv, cache: Path,
                     teacher_key: tuple[str, ...], class_weights: np.ndarray | None = None) -> list[Objective]:
    """The run's objectives, in the order their terms are summed. A term whose weight is 0 is left out,
    so it costs nothing (no frozen-encoder cache, no extra forward). `class_weights`: the cross-entropy's
    weight of each class (sftcli/objectives/supervised.py), None for none; self-training's term weighs a
    pseudo-labeled text by its pseudo-label's class the same way."""
    lc = cfg.loss
    self_training = None
    if cfg.strategy is not None and unlabeled is not None and lc.self_training_weight > 0:
        self_training = SelfTraining(lc, unlabeled, hidden_labels, model, class_weights, every=round_steps)
    objectives: list[Objective] = [Supervised(class_weights, lc.label_smoothing)]
    if lc.supcon_weight > 0:
        objectives.append(SupCon(lc.supcon_weight, lc.supcon_tau, cfg.model.pooling,
                                 with_unlabeled=lc.supcon_unlabeled and self_training is not None))
    if cfg.strategy is None or unlabeled is None:
        return objectives
    if lc.weight:
        objectives.append(Contrastive(lc, cfg.model.pooling, model, unlabeled, pad_id, env, cache, teacher_key,
                                      cfg.trainer.eval_batch_size, cfg.seed))
    if lc.consistency_weight > 0:
        objectives.append(Consistency(lc))
    if self_training is not None:
        objectives.append(self_training)
    return objectives
