"""A moving average of the weights (trainer.ema_decay): the model that is evaluated, selected, re-labels the
unlabeled texts and is exported, while the optimizer goes on training the raw weights.

Few-label fine-tuning moves a lot between evaluations: validation accuracy can swing by several points
from one evaluation to the next. The exponential moving average of the recent weights is a smoother
model. It is torch's AveragedModel with an EMA whose decay is warmed up over the first updates of a
model, min(decay, (1 + n) / (10 + n)) after n updates (as timm's ModelEma does), so that a fresh model's
average is not dominated by its initial weights: a fresh self-training student restarts the average
from its new weights.

Every rank holds the same raw weights after each update, so every rank's average is the same without a
collective.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, n_averaged: int) -> float:
    """The decay of the update after `n_averaged` updates (1 at the first update after the copy)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


class WeightAverage:
    """The averaged copy of `model` and how it follows the raw weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._ema_update)
        self.averaged.module.requires_grad_(False)  # never trained: the optimizer sees the raw weights only

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def _ema_update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        weight = 1.0 - warmed_up_decay(self.decay, int(n_averaged))
        torch._foreach_lerp_(averaged, current, weight)

    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step: fold the new raw weights in (the first update after a reset copies them)."""
        self.averaged.update_parameters(model)

    def reset(self, model: torch.nn.Module) -> None:
        """Start over from `model`'s weights (a fresh self-training student)."""
        self.averaged.module.load_state_dict(model.state_dict())
        self.averaged.n_averaged.zero_()

    def state_dict(self, model: torch.nn.Module) -> dict[str, Any]:
        """What a checkpoint needs besides the averaged weights it stores as the model: the raw weights the
        optimizer trains, and how many updates the average has had."""
        return {"raw_model": model.state_dict(), "n_averaged": int(self.averaged.n_averaged)}

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        model.load_state_dict(state["raw_model"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
