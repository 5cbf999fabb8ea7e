"""The few-labels protocol: from a source's raw splits to the labeled, unlabeled, validation and test sets.

Shared by every source: class names from train, validation carved from train when the source has none,
`data.labels_per_class` examples per class kept labeled with the rest of train as the unlabeled set, the
unlabeled set capped. Every choice is seeded, so the same seed gives the same sets.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sftcli.config import DataConfig
from sftcli.data.sources import read_source
from sftcli.data.textsets import (
    TextSet,
    class_names,
    clean_rows,
    clean_unlabeled,
    rows_to_set,
    text_set_fingerprint,
)
from sftcli.errors import DataError


@dataclass
class DataBundle:
    """The sets a run uses, and notes on how they were made (logged by the caller)."""

    label_names: list[str]
    labeled: TextSet
    validation: TextSet
    test: TextSet | None
    unlabeled: TextSet | None
    notes: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        # Once per run: every checkpoint records it, and a pile of a million texts takes a second to hash.
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.label_names).encode())
            for part in (self.labeled, self.validation, self.test, self.unlabeled):
                h.update(text_set_fingerprint(part).encode())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, carved) indices: `fraction` of each class carved out, seeded; at least one kept per class."""
    rng = np.random.default_rng([seed, 17])
    keep, carved = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n = int(round(len(idx) * fraction))
        n = min(n, len(idx) - 1)
        carved.extend(idx[:n].tolist())
        keep.extend(idx[n:].tolist())
    return np.sort(np.asarray(keep, dtype=np.int64)), np.sort(np.asarray(carved, dtype=np.int64))


def sample_per_class(labels: np.ndarray, k: int, seed: int, label_names: list[str], where: str) -> np.ndarray:
    """Indices of K examples per class, seeded; an error naming the class when one has fewer than K."""
    rng = np.random.default_rng([seed, 29])
    chosen = []
    for c in range(len(label_names)):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise DataError(f"data.labels_per_class={k}: class {label_names[c]!r} has only {len(idx)} example(s) "
                            f"in {where}; lower data.labels_per_class or add examples")
        chosen.extend(idx[rng.permutation(len(idx))[:k]].tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _carve_validation(train: TextSet, cfg: DataConfig, seed: int, where: str,
                      notes: list[str]) -> tuple[TextSet, TextSet]:
    """(train, validation) when the source has no validation split: a seeded, stratified share of train."""
    keep, carved = stratified_split(train.labels, cfg.validation_fraction, seed)
    if len(carved) == 0:
        raise DataError(f"{where}: too few examples ({len(train)}) to carve a validation split from train; give one "
                        "(data.validation=FILE, or data.validation_split=NAME with data=hub)")
    notes.append(f"no validation split: carved {len(carved)} examples ({cfg.validation_fraction:.0%} per class, "
                 f"stratified, seed {seed}) from train")
    return train.subset(keep), train.subset(carved)


def _few_labels(train: TextSet, unlabeled: TextSet | None, cfg: DataConfig, seed: int, label_names: list[str],
                where: str, notes: list[str]) -> tuple[TextSet, TextSet | None]:
    """(labeled, unlabeled) under data.labels_per_class: K per class; the rest of train becomes the
    unlabeled set (labels dropped) unless an unlabeled source is given."""
    k = cfg.labels_per_class
    if k is None:
        return train, unlabeled
    chosen = sample_per_class(train.labels, k, seed, label_names, where)
    rest = np.setdiff1d(np.arange(len(train)), chosen)
    if unlabeled is not None:
        notes.append(f"labels_per_class={k}: the other {len(rest)} train examples are not used "
                     "(an unlabeled source is given)")
        return train.subset(chosen), unlabeled
    notes.append(f"labels_per_class={k}: the other {len(rest)} train examples become unlabeled (labels dropped)")
    return train.subset(chosen), train.subset(rest).unlabeled()


def _cap_unlabeled(unlabeled: TextSet | None, cap: int | None, seed: int, notes: list[str]) -> TextSet | None:
    if unlabeled is None or cap is None or len(unlabeled) <= cap:
        return unlabeled
    if cap == 0:
        notes.append("data.max_unlabeled=0: no unlabeled texts")
        return None
    rng = np.random.default_rng([seed, 31])
    notes.append(f"unlabeled texts capped at data.max_unlabeled={cap} (seeded sample of {len(unlabeled)})")
    return unlabeled.subset(np.sort(rng.permutation(len(unlabeled))[:cap]))


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Read the configured source and apply the few-labels protocol; all checks raise DataError."""
    splits = read_source(cfg)
    origin = splits.origin
    notes: list[str] = list(splits.notes)
    train_rows = clean_rows(splits.train, origin["train"], True, notes)
    if cfg.label_names is not None:
        label_names = [str(name) for name in cfg.label_names]
        absent = [name for name in label_names if name not in {str(r["label"]) for r in train_rows}]
        if absent:
            notes.append(f"no training text has label(s) {', '.join(absent)} yet (data.label_names)")
    else:
        label_names = class_names(train_rows, splits.label_order, origin["train"])
    label2id = {name: i for i, name in enumerate(label_names)}
    train = rows_to_set(train_rows, label2id, origin["train"],
                        "data.label_names" if cfg.label_names is not None else "")

    def labeled_split(name: str) -> TextSet | None:
        rows = getattr(splits, name)
        if rows is None:
            return None
        known = origin["train"] if cfg.label_names is None else "data.label_names"
        return rows_to_set(clean_rows(rows, origin[name], True, notes), label2id, origin[name], known)

    validation = labeled_split("validation")
    where = origin["train"]
    if validation is None:
        train, validation = _carve_validation(train, cfg, seed, origin["train"], notes)
        where = f"{origin['train']} after carving {len(validation)} for validation"
    test = labeled_split("test")
    if test is None:
        notes.append("no test split: test metrics are skipped")
    unlabeled = None
    if splits.unlabeled is not None:
        unlabeled = clean_unlabeled(splits.unlabeled, origin["unlabeled"], notes)
        splits.unlabeled = None  # the pile's column lives on in the TextSet (memory-mapped, read by position)
    labeled, unlabeled = _few_labels(train, unlabeled, cfg, seed, label_names, where, notes)
    unlabeled = _cap_unlabeled(unlabeled, cfg.max_unlabeled, seed, notes)
    if unlabeled is not None:
        # Stable ids for the unlabeled stream: positions in the final unlabeled set.
        unlabeled = TextSet(unlabeled.texts, None, unlabeled.pairs, np.arange(len(unlabeled), dtype=np.int64),
                            unlabeled.hidden_labels)
    labeled = TextSet(labeled.texts, labeled.labels, labeled.pairs, np.arange(len(labeled), dtype=np.int64))
    counts = Counter(labeled.labels.tolist())
    per_class = ", ".join(f"{label_names[c]}={counts.get(c, 0)}" for c in range(len(label_names)))
    notes.append(f"labeled {len(labeled)} ({per_class}); unlabeled {0 if unlabeled is None else len(unlabeled)}; "
                 f"validation {len(validation)}; test {0 if test is None else len(test)}")
    return DataBundle(label_names, labeled, validation, test, unlabeled, notes)
