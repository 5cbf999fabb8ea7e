"""Text sets, and raw rows made into them: blank texts dropped and counted, labels checked and mapped.

A :class:`TextSet` is what every source is reduced to. Rows come from sftcli.data.sources as dicts (the
labeled splits) or as columns (:class:`RawTexts`, the unlabeled split); both are cleaned here the same
way, so a message about a dropped or bad row reads alike whatever the source.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sftcli.errors import DataError

# A raw labeled row: {"text", "pair", "label", "row"}; "row" is the 1-based data row in its file or
# split, so messages can point at it.
Row = dict[str, Any]


# Texts converted from Arrow to Python at a time when a whole column is walked (the fingerprint).
_WALK = 65_536


class TextColumn(Sequence[str]):
    """The texts of a pile read from a file or a hub split: the Arrow string array datasets memory-maps
    from its cache, read by position (`take`), never held whole as Python strings (a million of them
    cost more than 100 MB). `keep` maps positions to the array's rows when blank rows were dropped, None
    when every row is kept."""

    def __init__(self, array: Any, keep: np.ndarray | None = None) -> None:
        self.array, self.keep = array, keep

    def __len__(self) -> int:
        return len(self.array) if self.keep is None else len(self.keep)

    def take(self, index: np.ndarray | list[int]) -> list[str]:
        """The texts at positions `index`, in that order."""
        rows = np.asarray(index, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"text positions out of range for a column of {len(self)}")
        if self.keep is not None:
            rows = self.keep[rows]
        return self.array.take(rows).to_pylist()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.take(np.arange(*index.indices(len(self))))
        i = int(index)
        return self.take([i + len(self) if i < 0 else i])[0]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), _WALK):
            yield from self.take(np.arange(start, min(start + _WALK, len(self))))

    def __eq__(self, other: object) -> bool:
        # Equal to a list (or another column) of the same texts, as the list it stands for would be.
        if not isinstance(other, (list, tuple, TextColumn)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  (mutable-sequence semantics, as a list)


def take_texts(texts: Sequence[str], index: np.ndarray | list[int]) -> list[str]:
    """texts[i] for i in index, for a list or a TextColumn alike."""
    if isinstance(texts, TextColumn):
        return texts.take(index)
    return [texts[int(i)] for i in index]


@dataclass
class TextSet:
    """Texts (optionally pairs) with optional integer labels; `ids` are stable example ids."""

    texts: Sequence[str]  # a list, or a TextColumn (a file's or hub split's pile, read by position)
    labels: np.ndarray | None = None
    pairs: Sequence[str] | None = None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Labels an unlabeled set was made from (data.labels_per_class drops them): never trained on, only
    # read by diagnostics such as the accuracy of self-training's pseudo-labels.
    hidden_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            self.ids = np.arange(len(self.texts), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray | list[int]) -> TextSet:
        index = np.asarray(index, dtype=np.int64)
        return TextSet(
            texts=take_texts(self.texts, index),
            labels=None if self.labels is None else self.labels[index],
            pairs=None if self.pairs is None else take_texts(self.pairs, index),
            ids=self.ids[index],
            hidden_labels=None if self.hidden_labels is None else self.hidden_labels[index],
        )

    def unlabeled(self) -> TextSet:
        return TextSet(texts=self.texts, labels=None, pairs=self.pairs, ids=self.ids, hidden_labels=self.labels)


def text_set_fingerprint(ts: TextSet | None) -> str:
    """A hash of the texts, pairs and labels (ids aside): the cache keys of everything built from the set."""
    h = hashlib.sha256()
    if ts is None:
        return "none"
    for text in ts.texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    if ts.pairs is not None:
        for text in ts.pairs:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\x01")
    if ts.labels is not None:
        h.update(np.ascontiguousarray(ts.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


@dataclass
class RawTexts:
    """The text (and pair) column of an unlabeled split as read: an Arrow array for a string column
    (the datasets table's own, memory-mapped: no copy), else the list of values. Row i is data row i + 1.
    One dict per row, as for the labeled splits, would cost hundreds of MB for a million-line corpus."""

    texts: Any
    pairs: Any | None = None  # None: no pair column

    def __len__(self) -> int:
        return len(self.texts)


def _blank(value: Any) -> bool:
    return value is None or not str(value).strip()


def _row_list(rows: list[int], shown: int = 5) -> str:
    head = ", ".join(str(r) for r in rows[:shown])
    return head + (f", ... ({len(rows) - shown} more)" if len(rows) > shown else "")


def _check_label(row: Row, where: str) -> None:
    label = row["label"]
    # A CSV reader gives an empty cell as NaN: that is no label, not a class named "nan".
    if label is None or (isinstance(label, str) and not label.strip()) or (isinstance(label, float)
                                                                           and math.isnan(label)):
        raise DataError(f"{where}: row {row['row']} has an empty label")
    if isinstance(label, str) and label.strip().lower() == "nan":
        raise DataError(f"{where}: row {row['row']} has the label {label!r}: a missing value written out, not a "
                        "class; give the row its label or leave it out")
    if not isinstance(label, (str, int, float, bool)):
        raise DataError(f"{where}: row {row['row']} has label {label!r} ({type(label).__name__}); a label must be "
                        "a string or an integer")


def clean_rows(rows: list[Row], where: str, need_label: bool, notes: list[str]) -> list[Row]:
    """Drop rows whose text (or pair) is empty or whitespace-only, with a count in the notes; refuse
    rows with a missing or non-scalar label."""
    kept, blank = [], []
    for row in rows:
        if _blank(row["text"]) or (row["pair"] is not None and _blank(row["pair"])):
            blank.append(row["row"])
            continue
        if need_label:
            _check_label(row, where)
        if not isinstance(row["text"], str) or not isinstance(row["pair"], (str, type(None))):
            # A copy only when a value needs converting: a million-line corpus would otherwise hold
            # two dicts per row at once (hundreds of MB at the peak of reading it).
            row = {**row, "text": str(row["text"]), "pair": None if row["pair"] is None else str(row["pair"])}
        kept.append(row)
    if blank:
        notes.append(f"dropped {len(blank)} row(s) with an empty or whitespace-only text from {where} "
                     f"(rows {_row_list(blank)})")
    if not kept:
        what = f"all {len(rows)} row(s) have an empty or whitespace-only text" if rows else "it has no rows"
        raise DataError(f"{where}: empty dataset ({what})")
    return kept


def clean_unlabeled(raw: RawTexts, where: str, notes: list[str]) -> TextSet:
    """The unlabeled TextSet of raw columns: clean_rows and rows_to_set without a dict per row. Blank checks
    on Arrow strings are vectorised (the same whitespace as str.strip), and the dropped rows are named alike."""
    n = len(raw)
    texts, blank = _text_values(raw.texts)
    pairs = None
    if raw.pairs is not None:
        pairs, blank_pairs = _text_values(raw.pairs)
        blank |= blank_pairs
    dropped = np.flatnonzero(blank)
    if len(dropped):
        keep = np.flatnonzero(~blank)
        texts, pairs = _kept(texts, keep), None if pairs is None else _kept(pairs, keep)
        notes.append(f"dropped {len(dropped)} row(s) with an empty or whitespace-only text from {where} "
                     f"(rows {_row_list((dropped + 1).tolist())})")
    if not texts:
        what = f"all {n} row(s) have an empty or whitespace-only text" if n else "it has no rows"
        raise DataError(f"{where}: empty dataset ({what})")
    return TextSet(texts=texts, labels=None, pairs=pairs)


def _kept(values: Sequence[str], keep: np.ndarray) -> Sequence[str]:
    if isinstance(values, TextColumn):
        return TextColumn(values.array, keep)
    return [values[i] for i in keep.tolist()]


def _text_values(column: Any) -> tuple[Sequence[str], np.ndarray]:
    """(values, blank mask) of a text column: values that are not strings become strings (blank rows,
    None among them, are left as they are: they are dropped); an Arrow string column stays in Arrow."""
    if isinstance(column, list):
        blank = np.fromiter((_blank(v) for v in column), dtype=bool, count=len(column))
        values = [v if isinstance(v, str) or b else str(v) for v, b in zip(column, blank.tolist(), strict=True)]
        return values, blank
    import pyarrow.compute as pc

    blank = pc.match_substring_regex(column, _blank_pattern()).fill_null(True)
    return TextColumn(column), np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)


@functools.cache
def _blank_pattern() -> str:
    """An RE2 pattern matching exactly the strings that str.strip() empties (its whitespace, from Python)."""
    spaces = "".join(f"\\x{{{c:x}}}" for c in range(sys.maxunicode + 1) if chr(c).isspace())
    return f"^[{spaces}]*$"


def _name_key(name: str) -> tuple[int, int, str]:
    # Integer labels (also read back as strings) sort numerically, the others alphabetically.
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


def class_names(rows: list[Row], order: list[str] | None, where: str) -> list[str]:
    """Class names of the train rows: the dataset's own order when it has one, else sorted."""
    present = {str(r["label"]) for r in rows}
    if len(present) < 2:
        raise DataError(f"{where}: needs at least 2 classes, found {sorted(present)}")
    known = [n for n in order or [] if n in present]
    return known + sorted(present - set(known), key=_name_key)


def rows_to_set(rows: list[Row], label2id: dict[str, int] | None, where: str, train_where: str = "") -> TextSet:
    """Rows as a TextSet. Labels are matched by their string form, so 1 and "1" are the same class
    across files of different formats."""
    labels = None
    if label2id is not None:
        ids = []
        for row in rows:
            name = str(row["label"])
            if name not in label2id and train_where == "data.label_names":
                raise DataError(f"{where}: row {row['row']} has label {row['label']!r}, which is not in "
                                f"data.label_names {list(label2id)}")
            if name not in label2id:
                raise DataError(f"{where}: row {row['row']} has label {row['label']!r}, which never occurs in "
                                f"train{' ' + train_where if train_where else ''} (train labels: {list(label2id)})")
            ids.append(label2id[name])
        labels = np.asarray(ids, dtype=np.int64)
    pairs = [r["pair"] for r in rows] if rows and rows[0]["pair"] is not None else None
    return TextSet(texts=[r["text"] for r in rows], labels=labels, pairs=pairs)

