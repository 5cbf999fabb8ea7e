"""SetFit's head on a trained sft model: logistic regression fitted on the encoder's embeddings of the
labeled texts, against the model's own end-to-end linear head, on validation and test.

    python experiments/probe_logistic_head.py RUN_DIR [RUN_DIR ...] [--c 1,10,100]

For each run: the run's data (its config.yaml through sft's protocol, so the same labeled draw), the
exported model (RUN/model), the mean-pooled states the head reads, L2-normalised as SetFit's encoder
does, then scikit-learn's LogisticRegression at each C. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def embed(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised mean-pooled last states, the model's class probabilities) of `texts`."""
    from sftcli.api import pool

    zs, probs = [], []
    with torch.no_grad():
        for i in range(0, len(texts), 128):
            enc = tokenizer(texts[i:i + 128], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            probs.append(torch.softmax(out.logits.float(), -1))
            zs.append(pool(out.hidden_states[-1], enc["attention_mask"], "mean"))
    z = torch.cat(zs).numpy()
    return z / np.linalg.norm(z, axis=1, keepdims=True), torch.cat(probs).numpy()


def run_data(run: Path, whole_pile: bool = False) -> tuple[Any, Any]:
    """(the run's parsed config, its data): the same labeled draw, validation and test as the run;
    `whole_pile` also for a run trained with `data.max_unlabeled` set."""
    from sftcli.api import load_data, read_run_config

    cfg = read_run_config(run)
    if whole_pile:
        cfg.data.max_unlabeled = None
    return cfg, load_data(cfg.data, cfg.seed)


def probe(run: Path, cs: list[float]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, data = run_data(run)
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model", trust_remote_code=True)
    n = cfg.model.max_length
    z_train, _ = embed(model, tokenizer, data.labeled.texts, n)
    out: dict[str, Any] = {"run": str(run)}
    for name, part in (("val", data.validation), ("test", data.test)):
        if part is None:
            continue
        z, probs = embed(model, tokenizer, part.texts, n)
        out[f"{name}/own_head"] = float((probs.argmax(1) == part.labels).mean())
        for c in cs:
            head = LogisticRegression(C=c, max_iter=2000).fit(z_train, data.labeled.labels)
            out[f"{name}/logistic_C{c:g}"] = float((head.predict(z) == part.labels).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--c", default="1,10,100", help="inverse regularisation strengths to try")
    opts = ap.parse_args()
    torch.set_num_threads(1)
    for run in opts.runs:
        print(json.dumps(probe(run, [float(c) for c in opts.c.split(",")])), flush=True)


if __name__ == "__main__":
    main()
