"""`sft predict`: labels and per-class probabilities for new texts (csv / tsv / jsonl / txt in, csv or
jsonl out), streamed in batches; a failed run leaves no half-written output."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sftcli.commands.checkpoints import label_names, load_checkpoint
from sftcli.config import parse_predict
from sftcli.errors import ConfigError, DataError
from sftcli.rundir import claim


def read_rows(path: Path, columns: tuple[str, ...], key: str = "input") -> Iterator[dict[str, Any]]:
    """Rows of a text file (csv, tsv, jsonl, txt) that hold `columns` (text, and pair if any), streamed; a
    bad row or an unreadable file is a DataError naming `key`, the file and the line."""
    ext = path.suffix.lower()
    readers = {".csv": _csv_rows, ".tsv": _csv_rows, ".jsonl": _jsonl_rows, ".txt": _txt_rows}
    if ext not in readers:
        raise DataError(f"{key}: unsupported file type {ext or '(none)'} for {path}; use .csv, .tsv, .jsonl or .txt")
    try:
        yield from readers[ext](path, columns, key)
    except UnicodeDecodeError as exc:
        raise DataError(f"{key}: {path} is not UTF-8 text ({exc})") from exc


def _csv_rows(path: Path, columns: tuple[str, ...], key: str) -> Iterator[dict[str, Any]]:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would rename the first column.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are fields beyond csv's 128 KiB default
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{key}: {path} has no column {missing[0]!r} ({_column_key(columns, missing[0])}); "
                            f"columns found: {reader.fieldnames or []}")
        try:
            for row in reader:
                if None in row:  # more fields than the header names
                    raise DataError(f"{key}: {path}:{reader.line_num} has more fields than the header")
                yield row
        except csv.Error as exc:
            raise DataError(f"{key}: {path}:{reader.line_num}: {exc}") from exc


def _jsonl_rows(path: Path, columns: tuple[str, ...], key: str) -> Iterator[dict[str, Any]]:
    from sftcli.data import iter_json_lines

    for lineno, row in iter_json_lines(path, key):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{key}: {path}:{lineno} has no field {missing[0]!r} "
                            f"({_column_key(columns, missing[0])})")
        yield row


def _txt_rows(path: Path, columns: tuple[str, ...], key: str) -> Iterator[dict[str, Any]]:
    if len(columns) > 1:
        raise DataError(f"{key}: {path} holds one text per line, but the checkpoint takes text pairs "
                        f"(text_pair_column={columns[1]!r}); use a csv or jsonl input with both columns")
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield {columns[0]: line.rstrip("\r\n")}


def _column_key(columns: tuple[str, ...], name: str) -> str:
    return "text_column" if name == columns[0] else "text_pair_column"


class _PredictionWriter:
    """Writes records as csv or jsonl (by the output's extension); the csv header comes from the first record."""

    def __init__(self, fh: Any, jsonl: bool, inp: Path):
        self.fh, self.jsonl, self.inp = fh, jsonl, inp
        self.csv: csv.DictWriter | None = None

    def write(self, record: dict[str, Any], row_number: int) -> None:
        if self.jsonl:
            self.fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            return
        if self.csv is None:
            self.csv = csv.DictWriter(self.fh, fieldnames=list(record))
            self.csv.writeheader()
        extra = set(record) - set(self.csv.fieldnames)
        if extra:
            raise DataError(f"input: {self.inp} row {row_number} has fields {sorted(extra)} that the first row lacks; "
                            "a csv output needs the same fields in every row (write .jsonl instead)")
        # Lists and objects (from jsonl input) as JSON, not Python reprs.
        self.csv.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()})


def _predict_columns(pc: Any, saved: dict[str, Any]) -> tuple[str, ...]:
    """(text column,) or (text column, pair column): as given, else the ones the checkpoint was trained with."""
    data = saved.get("data", {})
    text = pc.text_column or data.get("text_column") or "text"
    pair = pc.text_pair_column if pc.text_pair_column is not None else data.get("text_pair_column")
    return (text, pair) if pair else (text,)


def _predict_paths(pc: Any) -> tuple[Path, Path]:
    inp, outp = Path(pc.input).expanduser(), Path(pc.output).expanduser()
    try:
        if not inp.is_file():
            raise DataError(f"input: file not found: {inp}")
        if outp.suffix.lower() not in (".csv", ".jsonl"):
            raise ConfigError(f"output: {outp} must end in .csv or .jsonl")
        if outp.is_dir():
            raise ConfigError(f"output: {outp} is a directory; name the file to write, e.g. {outp / 'pred.csv'}")
        if outp.resolve() == inp.resolve():
            raise ConfigError("output: must differ from input")
    except OSError as exc:  # a name longer than the filesystem allows, a path through a file, ...
        raise ConfigError(f"{'input' if exc.filename == str(inp) else 'output'}: {exc.filename}: "
                          f"{exc.strerror or exc}") from None
    return inp, outp


def dotlist_arguments(command: str, args: list[str]) -> dict[str, Any]:
    """key=value arguments as a dict (the form of predict and select); any other word is an exit 2."""
    from omegaconf import OmegaConf

    bad = [a for a in args if "=" not in a]
    if bad:
        raise ConfigError(f"sft {command} takes key=value arguments; not understood: {bad}")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(args))  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError(f"sft {command}: {exc}") from exc


def run_predict(args: list[str]) -> int:
    pc = parse_predict(dotlist_arguments("predict", args))
    inp, outp = _predict_paths(pc)
    return in_output_folder(outp, lambda: _predict(pc, inp, outp))


def in_output_folder(outp: Path, work: Callable[[], int]) -> int:
    """work() with the output file's folder (its path checked first) made and writable; when this command
    made the folder, it is removed again if the command fails (predict and select)."""
    folder = claim(outp.parent, continues=True, what="the output folder", keys="output", hint="")
    try:
        try:
            outp.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output: cannot create the folder {outp.parent}: {exc.strerror or exc}") from None
        if not os.access(outp.parent, os.W_OK):
            raise ConfigError(f"output: the folder {outp.parent} cannot be written")
        return work()
    except BaseException:
        folder.release(outp.parent)
        raise


def _predict(pc: Any, inp: Path, outp: Path) -> int:
    from sftcli.dist import pick_device

    path, model, tokenizer, saved = load_model(pc.checkpoint)
    columns = _predict_columns(pc, saved)
    max_length = pc.max_length or int(saved["model"]["max_length"])
    device = pick_device(pc.device, 0)
    model.to(device).eval()
    # Written under a temporary name and renamed at the end: a failed run leaves no half-written output.
    tmp = outp.with_name(outp.name + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = _PredictionWriter(fh, outp.suffix.lower() == ".jsonl", inp)
            n = _predict_rows(read_rows(inp, columns), writer, model, tokenizer, label_names(model), pc, columns,
                              max_length, device)
        tmp.replace(outp)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{n} predictions written to {outp} (checkpoint {path})")
    return 0


def load_model(given: str) -> tuple[Path, Any, Any, dict[str, Any]]:
    """A checkpoint or run (torch), or an `sft export` directory (onnxruntime)."""
    from sftcli.onnx_export import is_onnx_export, load_onnx_export

    path = Path(given).expanduser()
    if is_onnx_export(path):
        return (path, *load_onnx_export(path))
    return load_checkpoint(given)


# Rows read ahead and scored in order of length (predict_probs), written back in input order.
_READ_AHEAD_BATCHES = 16


def _predict_rows(rows: Iterator[dict[str, Any]], writer: _PredictionWriter, model: Any, tokenizer: Any,
                  names: list[str], pc: Any, columns: tuple[str, ...], max_length: int, device: Any) -> int:
    """Score rows in batches of pc.batch_size (streamed, with a progress bar); returns the row count."""
    from rich.progress import Progress

    text_col, pair_col = columns[0], columns[1] if len(columns) > 1 else None
    n = 0
    with Progress(transient=True) as bar:
        task = bar.add_task("predict", total=None)
        for chunk in _batched(rows, pc.batch_size * _READ_AHEAD_BATCHES):
            texts = [_as_text(r.get(text_col)) for r in chunk]
            pairs = [_as_text(r.get(pair_col)) for r in chunk] if pair_col else None
            probs = predict_probs(model, tokenizer, texts, pairs, pc.batch_size, max_length, device, pc.precision)
            for row, p in zip(chunk, probs, strict=True):
                n += 1
                record = dict(row)
                record["pred_label"] = names[int(p.argmax())]
                record.update({f"prob_{name}": round(float(v), 6) for name, v in zip(names, p, strict=True)})
                writer.write(record, n)
            bar.update(task, completed=n)
    return n


def predict_probs(model: Any, tokenizer: Any, texts: list[str], pairs: list[str] | None, batch_size: int,
                  max_length: int, device: Any, precision: str) -> np.ndarray:
    """Class probabilities of `texts` (and `pairs`), in order: tokenised at once, scored longest first in
    batches of `batch_size`, so each batch pads to texts of about its own length."""
    probs, _ = score_texts(model, tokenizer, texts, pairs, batch_size, max_length, device, precision)
    return probs if probs is not None else np.empty((0, model.config.num_labels), dtype=np.float32)


def score_texts(model: Any, tokenizer: Any, texts: list[str], pairs: list[str] | None, batch_size: int,
                max_length: int, device: Any, precision: str, *,
                embed: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(class probabilities or None, embeddings or None) of `texts`, in order, as predict_probs scores them.
    A classifier gives probabilities; an encoder (AutoModel) none. embed=True: also each text's mean of the
    last hidden states over its tokens, scaled to unit length (what `sft select` compares texts by)."""
    import torch

    from sftcli.data import cut_long_texts
    from sftcli.evaluate import autocast

    texts = cut_long_texts(texts, max_length)
    pairs = cut_long_texts(pairs, max_length) if pairs is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
    probs: np.ndarray | None = None
    vectors: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = tokenizer.pad({k: [v[i] for i in index] for k, v in enc.items()}, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode(), autocast(device, precision):
            out = model(**inputs, output_hidden_states=True) if embed else model(**inputs)
        logits = getattr(out, "logits", None)
        if logits is not None:
            if probs is None:
                probs = np.empty((len(texts), logits.shape[-1]), dtype=np.float32)
            probs[index] = torch.softmax(logits.float(), -1).cpu().numpy()
        if embed:
            last = out.hidden_states[-1] if logits is not None else out.last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(last.dtype)
            mean = ((last * mask).sum(1) / mask.sum(1).clamp(min=1)).float()
            mean = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
            if vectors is None:
                vectors = np.empty((len(texts), mean.shape[1]), dtype=np.float32)
            vectors[index] = mean
    return probs, vectors


def _batched(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)
