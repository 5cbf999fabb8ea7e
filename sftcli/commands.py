"""`sft eval` and `sft predict`: load a checkpoint, score texts, write results."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sftcli import checkpoint as ckpt
from sftcli.config import DataConfig, from_plain, parse_eval, parse_predict
from sftcli.errors import CheckpointError, ConfigError, DataError, ModelError

log = logging.getLogger("sft")


def load_checkpoint(path_str: str) -> tuple[Path, Any, Any, dict[str, Any]]:
    """(checkpoint dir, model, tokenizer, training config as plain dict) of a checkpoint or run dir."""
    import torch
    from transformers import AutoTokenizer

    from sftcli.model import load_checkpoint_model

    path = ckpt.resolve_checkpoint(Path(path_str).expanduser())
    ckpt.verify(path)
    state = ckpt.load_state(path / ckpt.TRAIN_STATE)
    model = load_checkpoint_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no loadable tokenizer ({exc})") from exc
    return path, model, tokenizer, json.loads(state["config"])


def _label_names(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def run_eval(cfg: Any, out_dir: Path) -> dict[str, Any]:
    import torch

    from sftcli.data import load_data
    from sftcli.dist import pick_device
    from sftcli.evaluate import evaluate
    from sftcli.model import tokenizer_fingerprint
    from sftcli.runlog import setup_logging
    from sftcli.trainer import cache_root

    ec = parse_eval(cfg)
    setup_logging(None, True)
    path, model, tokenizer, saved = load_checkpoint(ec.checkpoint)
    train_cfg = from_plain(saved)
    names = _label_names(model)
    data_cfg: DataConfig = ec.data or train_cfg.data
    if ec.data is not None and data_cfg.source == "files" and not data_cfg.train:
        ts = _labeled_file(data_cfg, ec.split, names)
        where = getattr(data_cfg, ec.split)
    else:
        bundle = load_data(data_cfg, train_cfg.seed)
        if bundle.label_names != names:
            raise ModelError(f"{path}: the checkpoint's labels {names} do not match the data's {bundle.label_names}")
        ts = bundle.test if ec.split == "test" else bundle.validation
        if ts is None:
            raise DataError(f"the data has no {ec.split} split to evaluate")
        where = f"{data_cfg.source} {ec.split}"
    from sftcli.data import encode

    device = pick_device(ec.device, 0)
    model.to(device)
    enc = encode(ts, tokenizer, train_cfg.model.max_length, cache_root(train_cfg) if ec.cache_dir is None
                 else Path(ec.cache_dir), tokenizer_fingerprint(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        result = evaluate(model, enc, ts.labels, names, ec.batch_size, pad_id, device, ec.precision)
    out = {"checkpoint": str(path), "split": ec.split, "data": where, **result, "label_names": names}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(out, indent=2))
    print_eval_table(out)
    print(f"eval.json written to {out_dir / 'eval.json'}")
    return out


def _labeled_file(cfg: DataConfig, split: str, names: list[str]) -> Any:
    from sftcli.data import LABELED_EXTENSIONS, TextSet, _clean, _read_table, _rows

    file = getattr(cfg, split)
    if not file:
        raise ConfigError(f"data.{split}: a file is required to evaluate split={split} on data=files")
    rows = _clean(_rows(_read_table(file, f"data.{split}", LABELED_EXTENSIONS), file, cfg, True), file, True, [])
    lookup = {n: i for i, n in enumerate(names)}
    labels = []
    for i, r in enumerate(rows):
        key = str(r["label"])
        if key not in lookup:
            raise DataError(f"{file}: row {i + 1} has label {r['label']!r}, unknown to the checkpoint (labels: {names})")
        labels.append(lookup[key])
    pairs = [r["pair"] for r in rows] if rows[0]["pair"] is not None else None
    return TextSet([r["text"] for r in rows], np.asarray(labels, dtype=np.int64), pairs)


def print_eval_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = result["label_names"]
    head = Table(title=f"{result['data']} (n={result['n']})")
    head.add_column("accuracy", justify="right")
    head.add_column("macro-F1", justify="right")
    head.add_row(f"{result['accuracy']:.4f}", f"{result['macro_f1']:.4f}")
    console.print(head)
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for name in names:
        m = result["per_class"][name]
        per.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(per)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in names:
        cm.add_column(name, justify="right")
    for name, row in zip(names, result["confusion_matrix"], strict=True):
        cm.add_row(name, *[str(v) for v in row])
    console.print(cm)


# ----------------------------------------------------------------------------------------------------
# sft predict


def _read_rows(path: Path, text_column: str) -> Iterator[dict[str, Any]]:
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if ext == ".tsv" else ",")
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                raise DataError(f"input: {path} has no column {text_column!r} (text_column); "
                                f"columns found: {reader.fieldnames}")
            yield from reader
    elif ext == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"input: malformed JSON line at {path}:{lineno}: {exc}") from exc
                if not isinstance(row, dict) or text_column not in row:
                    raise DataError(f"input: {path}:{lineno} has no field {text_column!r} (text_column)")
                yield row
    elif ext == ".txt":
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield {text_column: line.rstrip("\n")}
    else:
        raise DataError(f"input: unsupported file type {ext or '(none)'} for {path}; use .csv, .tsv, .jsonl or .txt")


def run_predict(args: list[str]) -> int:
    import torch
    from omegaconf import OmegaConf
    from rich.progress import Progress

    from sftcli.dist import pick_device
    from sftcli.evaluate import autocast

    bad = [a for a in args if "=" not in a]
    if bad:
        raise ConfigError(f"sft predict takes key=value arguments; not understood: {bad}")
    try:
        raw = OmegaConf.to_container(OmegaConf.from_dotlist(args))
    except Exception as exc:
        raise ConfigError(f"sft predict: {exc}") from exc
    pc = parse_predict(raw)  # type: ignore[arg-type]
    inp, outp = Path(pc.input).expanduser(), Path(pc.output).expanduser()
    if not inp.is_file():
        raise DataError(f"input: file not found: {inp}")
    if outp.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"output: {outp} must end in .csv or .jsonl")
    try:
        if outp.resolve() == inp.resolve():
            raise ConfigError("output: must differ from input")
    except OSError:
        pass
    path, model, tokenizer, saved = load_checkpoint(pc.checkpoint)
    max_length = pc.max_length or int(saved["model"]["max_length"])
    names = _label_names(model)
    device = pick_device(pc.device, 0)
    model.to(device).eval()
    tmp = outp.with_name(outp.name + ".tmp")
    writer: Any = None
    n = 0
    with tmp.open("w", newline="", encoding="utf-8") as out, Progress(transient=True) as bar:
        task = bar.add_task("predict", total=None)
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal writer, n
            texts = [str(r[pc.text_column] or "") for r in batch]
            pairs = [str(r[pc.text_pair_column]) for r in batch] if pc.text_pair_column else None
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            with torch.inference_mode(), autocast(device, pc.precision):
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
            probs = torch.softmax(logits, -1).cpu().numpy()
            for row, p in zip(batch, probs, strict=True):
                record = dict(row)
                record["pred_label"] = names[int(p.argmax())]
                record.update({f"prob_{name}": round(float(v), 6) for name, v in zip(names, p, strict=True)})
                if outp.suffix.lower() == ".jsonl":
                    out.write(json.dumps(record) + "\n")
                else:
                    if writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(record))
                        writer.writeheader()
                    writer.writerow(record)
            n += len(batch)
            bar.update(task, completed=n)
            batch.clear()

        for row in _read_rows(inp, pc.text_column):
            batch.append(row)
            if len(batch) == pc.batch_size:
                flush()
        if batch:
            flush()
    tmp.replace(outp)
    print(f"{n} predictions written to {outp} (checkpoint {path})")
    return 0
