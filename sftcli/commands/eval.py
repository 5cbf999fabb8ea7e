"""`sft eval`: score a checkpoint on a split of its data (or a labeled file), write eval.json, print tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftcli.commands.checkpoints import label_names, load_checkpoint
from sftcli.config import DataConfig, EvalConfig, from_plain
from sftcli.errors import ConfigError, DataError, ModelError


def run_eval(ec: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """`sft eval` with its validated config: score a checkpoint, write eval.json into out_dir."""
    import torch

    from sftcli.data import load_data
    from sftcli.dist import pick_device
    from sftcli.evaluate import evaluate
    from sftcli.model import tokenizer_fingerprint
    from sftcli.rundir import cache_root
    from sftcli.runlog import setup_logging

    setup_logging(None, True)
    path, model, tokenizer, saved = load_checkpoint(ec.checkpoint)
    train_cfg = from_plain(saved)
    names = label_names(model)
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
    enc = encode(ts, tokenizer, train_cfg.model.max_length, cache_root(ec.cache_dir or train_cfg.cache_dir),
                 tokenizer_fingerprint(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        result = evaluate(model, enc, ts.labels, names, ec.batch_size, pad_id, device, ec.precision)
    out = {"checkpoint": str(path), "split": ec.split, "data": where, **result, "label_names": names}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(out, indent=2))
    print_eval_table(out)
    print(f"eval.json written to {out_dir / 'eval.json'}")
    print(f"run dir: {out_dir.resolve()}")
    return out


def _labeled_file(cfg: DataConfig, split: str, names: list[str]) -> Any:
    """A labeled file for `sft eval data=files data.test=FILE`, with the checkpoint's label names."""
    from sftcli.data import read_labeled_file

    if not getattr(cfg, split):
        raise ConfigError(f"data.{split}: a file is required to evaluate split={split} on data=files")
    return read_labeled_file(cfg, split, names, names_from="of the checkpoint")


# The whole-set metrics of eval.json, as the first table shows them.
SUMMARY_COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
                   ("roc_auc", "ROC AUC"))


def print_eval_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = result["label_names"]
    head = Table(title=f"{result['data']} (n={result['n']})")
    shown = [(k, title) for k, title in SUMMARY_COLUMNS if k in result]  # roc_auc: two classes only
    for _, title in shown:
        head.add_column(title, justify="right")
    head.add_row(*[f"{result[k]:.4f}" for k, _ in shown])
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
