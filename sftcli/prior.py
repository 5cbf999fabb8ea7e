"""The class prior of the unlabeled texts, as a correction of the classifier (model.class_prior,
loss.self_training_prior).

A few-label draw (data.labels_per_class) holds the same number of texts of every class, so the
classifier learns to predict under a uniform prior, while the texts it will meet need not be balanced at
all (TREC-6: 3% ABBR, 22% DESC). With the class prior of the texts, pi, and the labeled set's, pi_L,
Bayes' rule gives the classifier's probabilities under pi (Saerens et al. 2002):

    p'(y | x) ~ p(y | x) * pi(y) / pi_L(y),

which for a softmax classifier is a bias of log(pi(y) / pi_L(y)) on its logits, so it folds into the
bias of the head's last linear layer and the exported model predicts under pi in any runtime. pi is
estimated from the unlabeled texts: the mean of the classifier's probabilities over them (the first
step of Saerens et al.'s EM; on TREC-6, further EM steps moved no validation accuracy and made some
estimates collapse to 0 for a class).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

log = logging.getLogger("sft")

# A class the classifier never predicts would get log(0): its estimated share is kept at least this.
MIN_SHARE = 1e-4
# The end-of-run estimate reads at most this many unlabeled texts (a seeded sample): its error is then
# about 0.01 per class, and the cost bounded on a large pile.
ESTIMATE_TEXTS = 2048


def labeled_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """pi_L: each class's share of the labeled texts (a class without one keeps MIN_SHARE)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.maximum(counts / counts.sum(), MIN_SHARE)


def estimate_prior(probs: np.ndarray) -> np.ndarray:
    """pi of the texts behind `probs` [n, C]: the mean predicted probability of each class."""
    return np.maximum(probs.astype(np.float64).mean(0), MIN_SHARE)


def logit_shift(prior: np.ndarray, train_prior: np.ndarray) -> np.ndarray:
    """log(pi / pi_L): what to add to the logits of a classifier trained under pi_L to predict under pi.

    A class the classifier trained on no text of (data.label_names names it, no labeled text has it yet)
    has pi_L at the MIN_SHARE floor: it has no learned odds to correct, and dividing by the floor would
    make it win almost everywhere, so its shift is 0."""
    shift = np.log(prior) - np.log(train_prior)
    return np.where(np.asarray(train_prior) > MIN_SHARE, shift, 0.0)


def reweight(probs: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """`probs` [n, C] under the shifted prior (renormalised), as float32."""
    weighted = probs.astype(np.float64) * np.exp(shift)[None, :]
    return (weighted / weighted.sum(1, keepdims=True)).astype(np.float32)


def head_layer(model: torch.nn.Module, n_classes: int) -> torch.nn.Linear:
    """The classifier head's last linear layer: the last nn.Linear with one output per class (BERT's and
    DistilBERT's `classifier`, RoBERTa's `classifier.out_proj`, `score` of decoder models), which must have
    a bias (one the model's config does not know of would not survive export). ValueError otherwise."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_classes]
    if not heads:
        raise ValueError(f"no linear layer with {n_classes} outputs in {type(model).__name__}: the class prior has "
                         "no head bias to go into")
    if heads[-1].bias is None:
        raise ValueError(f"the head of {type(model).__name__} has no bias for the class prior to go into")
    return heads[-1]


@torch.no_grad()
def fold_into_head(model: torch.nn.Module, shift: np.ndarray) -> None:
    """Add `shift` [C] to the head's output bias."""
    bias = head_layer(model, len(shift)).bias
    bias.add_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))


def trained_prior(labeled: np.ndarray, pseudo: np.ndarray | None, pseudo_weight: float) -> np.ndarray:
    """The prior a model learns from a step of labeled texts (prior `labeled`) and pseudo-labeled ones
    (prior `pseudo`, their term weighted `pseudo_weight`): each term is a mean over its rows, so the
    classes' shares add up in the ratio of the terms' weights."""
    if pseudo is None or pseudo_weight == 0:
        return labeled
    return (labeled + pseudo_weight * pseudo) / (1.0 + pseudo_weight)


def fold_unlabeled_prior(model: torch.nn.Module, unlabeled: Any, trained: np.ndarray, names: list[str], seed: int,
                         probabilities: Callable[[Any], np.ndarray]) -> dict[str, Any]:
    """model.class_prior=unlabeled, at the end of a run: estimate the unlabeled texts' class prior with the
    best model (`probabilities` of a text set's token ids; a seeded sample of ESTIMATE_TEXTS at most) and
    fold it into its head. trained: the prior the best checkpoint was trained under (a self-training
    student's includes its pseudo-labels). Returns what the run's summary records."""
    if unlabeled is None or len(unlabeled) == 0:
        log.info("class prior: no unlabeled texts to estimate it from; the labeled texts' prior stays")
        return {"folded": False, "reason": "no unlabeled texts"}
    if len(unlabeled) > ESTIMATE_TEXTS:
        index = np.sort(np.random.default_rng(seed).choice(len(unlabeled), ESTIMATE_TEXTS, replace=False))
        unlabeled = unlabeled.subset(index)
    estimated = estimate_prior(probabilities(unlabeled))
    trained = np.asarray(trained, dtype=np.float64)
    shift = logit_shift(estimated, trained)
    fold_into_head(model, shift)
    log.info("class prior: estimated from %d unlabeled texts %s (trained under %s), folded into the head",
             len(unlabeled), _shares(names, estimated), _shares(names, trained))
    return {"folded": True, "texts": len(unlabeled), "estimated": dict(zip(names, map(float, estimated), strict=True)),
            "trained": dict(zip(names, map(float, trained), strict=True)),
            # `sft eval` / `sft predict` of the run add it to the best checkpoint's head, as the export has it.
            "shift": [float(x) for x in shift]}


def _shares(names: list[str], p: np.ndarray) -> str:
    return " ".join(f"{n}={v:.3f}" for n, v in zip(names, p, strict=True))
