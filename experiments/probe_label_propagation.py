"""Pseudo-labels from label propagation against the classifier's own, on a trained sft model.

    python experiments/probe_label_propagation.py RUN_DIR [RUN_DIR ...] [--shares 0.5,0.75] [--k 10,20]

For each run: the run's labeled draw and the whole unlabeled pile (its config.yaml through sft's protocol,
with data.max_unlabeled lifted), the exported model's normalised mean-pooled states and its class
probabilities, then label propagation (Zhou et al. 2004, as in Iscen et al. 2019: a k-nearest-neighbour
graph with weights cos^3, alpha 0.99, solved by conjugate gradients) from the labeled texts. Prints the
accuracy of the most confident share of the pile (the texts self-training would keep) for the
classifier, for propagation, and for their mean. Needs a pile with hidden labels (data.labels_per_class
on a labeled train split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def propagate(z: np.ndarray, labeled: np.ndarray, n_classes: int, k: int, alpha: float = 0.99) -> np.ndarray:
    """Class scores of the rows of `z` after the first len(labeled) rows (whose classes are `labeled`)."""
    from scipy import sparse
    from scipy.sparse.linalg import cg

    n, n_lab = len(z), len(labeled)
    sim = z @ z.T
    np.fill_diagonal(sim, -1.0)
    nearest = np.argpartition(-sim, k, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    weights = np.clip(sim[rows, nearest.ravel()], 0, None) ** 3
    w = sparse.csr_matrix((weights, (rows, nearest.ravel())), shape=(n, n))
    w = w + w.T
    degree = np.asarray(w.sum(1)).ravel()
    d = sparse.diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    system = sparse.eye(n) - alpha * (d @ w @ d)
    scores = np.zeros((n, n_classes))
    for c in range(n_classes):
        y = np.zeros(n)
        y[:n_lab][labeled == c] = 1.0
        scores[:, c], _ = cg(system, y, rtol=1e-6, maxiter=50)
    scores = np.clip(scores[n_lab:], 0, None)
    return scores / scores.sum(1, keepdims=True).clip(1e-12)


def probe(run: Path, shares: list[float], ks: list[int]) -> dict[str, Any]:
    from probe_logistic_head import embed, run_data  # scripts/, on the path when this runs as a script
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, data = run_data(run, whole_pile=True)  # the whole pile, also for a run trained without it
    if data.unlabeled is None or data.unlabeled.hidden_labels is None:
        raise SystemExit(f"{run}: the run's pile has no hidden labels (needs data.labels_per_class)")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model", trust_remote_code=True)
    z_lab, _ = embed(model, tokenizer, data.labeled.texts, cfg.model.max_length)
    z_pile, p_clf = embed(model, tokenizer, data.unlabeled.texts, cfg.model.max_length)
    truth = data.unlabeled.hidden_labels

    def top(p: np.ndarray, share: float) -> float:
        keep = np.argsort(-p.max(1))[: int(round(share * len(p)))]
        return round(float((p[keep].argmax(1) == truth[keep]).mean()), 4)

    out: dict[str, Any] = {"run": str(run), "pile": len(truth)}
    candidates = {"classifier": p_clf}
    for k in ks:
        p_lp = propagate(np.concatenate([z_lab, z_pile]), data.labeled.labels, p_clf.shape[1], k)
        candidates[f"propagation_k{k}"] = p_lp
        candidates[f"mean_k{k}"] = (p_clf + p_lp) / 2
    for name, p in candidates.items():
        out[f"{name}/all"] = top(p, 1.0)
        for share in shares:
            out[f"{name}/top{share:g}"] = top(p, share)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--shares", default="0.5,0.75", help="shares of the pile kept, most confident first")
    ap.add_argument("--k", default="10,20", help="neighbours of the graph")
    opts = ap.parse_args()
    torch.set_num_threads(1)
    for run in opts.runs:
        print(json.dumps(probe(run, [float(s) for s in opts.shares.split(",")], [int(k) for k in opts.k.split(",")])),
              flush=True)


if __name__ == "__main__":
    main()
