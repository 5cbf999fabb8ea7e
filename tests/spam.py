"""A small imbalanced two-class data set (ham 4 : spam 1 in train) as local CSV files, for runs on model=tiny
that need two classes (ROC AUC) or unequal class counts (class weights)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

_SPAM = ["free", "prize", "win", "cash", "claim", "offer", "urgent", "reward"]
_HAM = ["lunch", "meeting", "tomorrow", "home", "dinner", "call", "later", "thanks"]

# (ham, spam) texts per split
COUNTS = {"train": (48, 12), "validation": (16, 8), "test": (24, 8)}


def _text(words: list[str], n: int) -> str:
    # Distinct texts (deduplication would drop repeats) of four words, each of its class with probability
    # 0.6, else of the other class: the classes overlap, so scores are neither perfect nor constant.
    rng = random.Random(n)
    other = _HAM if words is _SPAM else _SPAM
    return " ".join(rng.choice(words if rng.random() < 0.6 else other) for _ in range(4)) + f" number {n}"


def spam_files(folder: Path) -> list[str]:
    """Write train/validation/test CSVs (text, label) into `folder`; returns the overrides that use them."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, (n_ham, n_spam) in COUNTS.items():
        rows = [{"text": _text(_HAM, start + i), "label": "ham"} for i in range(n_ham)]
        rows += [{"text": _text(_SPAM, start + n_ham + i), "label": "spam"} for i in range(n_spam)]
        start += n_ham + n_spam
        with (folder / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return ["data=files", f"data.train={folder / 'train.csv'}", f"data.validation={folder / 'validation.csv'}",
            f"data.test={folder / 'test.csv'}", "data.labels_per_class=null"]
