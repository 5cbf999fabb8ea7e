"""Loss terms as pure functions of tensors (no model, no process group)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                    weight_total: float | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the classifier, computed in fp32: the mean over the (local) batch, or with class
    weights `weight` [C] the weighted sum over the local rows divided by `weight_total`, the sum of the
    weights of every row's label in the GLOBAL batch (F.cross_entropy(weight=...)'s weighted mean when one
    process holds the whole batch). `smoothing`: torch's label smoothing of the targets."""
    if weight is None:
        return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
    assert weight_total is not None
    return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum",
                           label_smoothing=smoothing) / weight_total


def info_nce(
    q: torch.Tensor,
    p: torch.Tensor,
    keys: torch.Tensor | None,
    tau: float,
    self_offset: int,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE of the local rows `q` against their positives `p` and the global negatives `keys`.

    q:    [b, d] fine-tuned representations of this process's texts (with gradient).
    p:    [b, d] frozen pretrained representations of the same texts (the positives; no gradient).
    keys: [N, d] the negatives' representations for the whole global batch (fine-tuned reps gathered
          with gradient across processes, or the frozen reps); row `self_offset + i` is text i itself
          and is masked, so a text is never its own negative.
    Loss for text i: -log( e^{s(q_i,p_i)/tau} / (e^{s(q_i,p_i)/tau} + sum_{j != i} e^{s(q_i,k_j)/tau}) ),
    with s the cosine similarity, all in fp32. Returns the SUM over local rows (the caller divides by
    the global batch size so that gradients match one process) and detached diagnostics.
    `exclude` [b, N] (True = not a negative) removes further negatives, e.g. texts of the same
    predicted class. `keys=None` means no negatives at all: the stay-close term (1 - s(q_i,p_i)) / tau.
    """
    q = F.normalize(q.float(), dim=-1)
    p = F.normalize(p.float(), dim=-1)
    b = q.shape[0]
    pos = (q * p).sum(-1, keepdim=True) / tau  # [b, 1]
    if keys is None:
        per_text = (1.0 / tau) - pos.squeeze(1)
        zero = torch.zeros((), device=q.device)
        stats = {"pos_sim": (pos.squeeze(1) * tau).sum().detach(), "top1": torch.tensor(float(b), device=q.device),
                 "neg_sim": zero}
        return per_text.sum(), stats
    k = F.normalize(keys.float(), dim=-1)
    neg = q @ k.t() / tau  # [b, N]
    rows = torch.arange(b, device=q.device)
    neg = neg.index_put((rows, rows + self_offset), torch.tensor(float("-inf"), device=q.device))
    if exclude is not None:
        neg = neg.masked_fill(exclude, float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    per_text = torch.logsumexp(logits, dim=1) - pos.squeeze(1)
    with torch.no_grad():
        stats = {
            "pos_sim": (pos.squeeze(1) * tau).sum(),
            # top-1: the positive scores above every negative
            "top1": (logits.argmax(dim=1) == 0).float().sum(),
            "neg_sim": (neg.masked_fill(torch.isinf(neg), 0.0).sum(1) * tau / max(k.shape[0] - 1, 1)).sum(),
        }
    return per_text.sum(), stats


def consistency_loss(strong: torch.Tensor, weak: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label term (FixMatch / UDA style) on unlabeled texts.

    weak:   [b, C] logits of a lightly perturbed view (no dropout), no gradient.
    strong: [b, C] logits of the more strongly perturbed view (the training forward, with dropout).
    Texts whose weak prediction is at least `threshold` confident contribute the cross-entropy of the
    strong view against that prediction. Returns (SUM over local rows, number of confident rows).
    """
    probs = torch.softmax(weak.float(), dim=-1)
    confidence, target = probs.max(dim=-1)
    keep = (confidence >= threshold).float()
    per_text = F.cross_entropy(strong.float(), target, reduction="none")
    return (per_text * keep).sum(), keep.sum().detach()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [n, C] logits, as float32."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def select_pseudo_labels(probs: np.ndarray, top: float, per_class: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels for self-training: the most confident share of the classifier's predictions.

    probs: [n, C] the classifier's class probabilities for every unlabeled text.
    per_class=True: for each class, of the texts predicted as that class, the most confident
    ceil(top * count) keep their prediction, so classes the model is less sure of do not vanish from the
    pseudo-labels. per_class=False: the most confident ceil(top * n) texts overall, whatever their class
    (more accurate when a class is over-predicted: its weakest predictions are not kept just to fill a
    share). The rest get -1 (not used). Returns (labels [n] int64, confidence [n] float32).
    """
    pred, conf = probs.argmax(axis=1), probs.max(axis=1).astype(np.float32)
    labels = np.full(len(pred), -1, dtype=np.int64)
    groups = [np.flatnonzero(pred == c) for c in np.unique(pred)] if per_class else [np.arange(len(pred))]
    for members in groups:
        keep = int(np.ceil(top * len(members)))
        # Stable sort: equal confidences keep the lower index, so the choice is reproducible.
        chosen = members[np.argsort(-conf[members], kind="stable")[:keep]]
        labels[chosen] = pred[chosen]
    return labels, conf
