"""The run's final model: `RUN/model/`, the best checkpoint without training state, plus a model card.

What a user uploads or serves. It loads in plain transformers as the checkpoint does
(`pipeline("text-classification", model="RUN/model")`; with `trust_remote_code=True` for
model.head_pooling=mean, whose class file travels with the model). The weights are hard links to the
best checkpoint's files where the filesystem allows, so the run holds them once.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sftcli import checkpoint as ckpt
from sftcli.config import TrainConfig
from sftcli.data.sources import train_files
from sftcli.runlog import format_value

log = logging.getLogger("sft")

MODEL_DIR = "model"
# Checkpoint files that are sft's bookkeeping, not the model.
_NOT_MODEL = (ckpt.MANIFEST, ckpt.TRAIN_STATE, ckpt.SFT_STATE)
_EMBEDDED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def export_model(checkpoint: Path, out: Path, card: str, model: Any = None) -> Path:
    """Write `out` from `checkpoint`: every model, config and tokenizer file, and README.md = `card`.
    `model`: weights to write instead of the checkpoint's (its head corrected by model.class_prior).
    Built under a temporary name and renamed, so `out` is always complete (or the previous export)."""
    tmp = staging_dir(out)
    for src in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        if src.name in _NOT_MODEL or src.name.startswith(ckpt.RNG_PREFIX):
            continue
        if model is not None and src.suffix in (".safetensors", ".bin"):
            continue  # not linked: the weights below replace them (a write into a link would change the checkpoint)
        _link_or_copy(src, tmp / src.name)
    if model is not None:
        model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "README.md").write_text(card)
    replace_dir(tmp, out)
    return out


def staging_dir(out: Path) -> Path:
    """An empty directory beside `out` to build it in (see replace_dir)."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """`tmp`, complete, becomes `out`; a previous `out` is replaced whole (renamed aside, then removed), so
    `out` is never half-written."""
    if out.exists():
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _link_or_copy(src: Path, dst: Path) -> None:
    # Weights are large and never rewritten in place (a checkpoint is written once), so a hard link is
    # a safe way to hold them once; small files are copied.
    if src.suffix in (".safetensors", ".bin"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def needs_remote_code(model_type: str) -> bool:
    """Whether plain transformers needs trust_remote_code=True to load this model type (sft's own classes)."""
    from sftcli.model import SFT_MODEL_TYPES

    return model_type in SFT_MODEL_TYPES


def _base_model(cfg: TrainConfig) -> str:
    if cfg.model.source == "hf":
        return str(cfg.model.name_or_path)
    if cfg.model.source == "minilm":
        return _EMBEDDED_MODEL_ID
    return "a randomly initialised tiny BERT (model=tiny)"


def _command(run_dir: Path) -> str:
    """The `sft train` command line of the run, from Hydra's record of its overrides."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    args: list[str] = []
    if overrides.is_file():
        import yaml

        # Plain YAML: the overrides as typed, an interpolation (${oc.env:X}) shown, never resolved.
        recorded = yaml.safe_load(overrides.read_text()) or []
        args = [str(a) for a in recorded if not str(a).startswith("hydra.")]
    return " ".join(["sft train", *args])




# What a Hub page shows of the data: the dataset id and language of the embedded set; a hub source's id.
_TREC_HUB_ID = "CogComp/trec"
_HEAD_TEXT = {"pooler": "the model's own pooler", "mean": "the mean over non-pad tokens",
              "cls": "the first token", "max": "the max over non-pad tokens"}


def card_metadata(cfg: TrainConfig, summary: dict[str, Any], run_name: str) -> dict[str, Any]:
    """The model card's YAML header (the Hub's model-card metadata): library, task, base model, data set and
    language where known, and `model-index` with the run's validation and test results, so a Hub page
    shows the metrics."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-classification",
                            "tags": ["sft", "text-classification"]}
    if cfg.model.source != "tiny":
        meta["base_model"] = _base_model(cfg)
    dataset = {"trec6": {"name": "TREC-6", "type": _TREC_HUB_ID},
               "hub": {"name": str(cfg.data.name), "type": str(cfg.data.name)},
               "files": {"name": ", ".join(Path(p).name for p in train_files(cfg.data)), "type": "local"}}[cfg.data.source]
    if cfg.data.source != "files":
        meta["datasets"] = [dataset["type"]]
    if cfg.data.source == "trec6":
        meta["language"] = ["en"]
    results = []
    for split, key in (("validation", "val"), ("test", "test")):
        metrics = [{"type": kind, "value": float(summary[f"{key}/{name}"]), "name": f"{split} {label}", **extra}
                   for name, kind, label, extra in (("accuracy", "accuracy", "accuracy", {}),
                                                    ("macro_f1", "f1", "macro-F1", {"args": {"average": "macro"}}))
                   if isinstance(summary.get(f"{key}/{name}"), (int, float))]
        if metrics:
            results.append({"task": {"type": "text-classification", "name": "Text Classification"},
                            "dataset": {**dataset, "split": split}, "metrics": metrics})
    if results:
        meta["model-index"] = [{"name": run_name, "results": results}]
    return meta


def model_card(cfg: TrainConfig, summary: dict[str, Any], run_dir: Path, model_type: str, head: str) -> str:
    """README.md for the exported model (the Hugging Face model-card convention: YAML metadata, then text).
    `head`: what the classifier reads (model.head_pooling as resolved)."""
    import yaml

    base = _base_model(cfg)
    labels = summary.get("label_names", [])
    remote = needs_remote_code(model_type)
    flag = ", trust_remote_code=True" if remote else ""
    header = yaml.safe_dump(card_metadata(cfg, summary, run_dir.name), sort_keys=False, allow_unicode=True)
    data = {"trec6": "TREC-6 questions (embedded)", "files": f"local files (train: {', '.join(train_files(cfg.data))})",
            "hub": f"{cfg.data.name} (datasets)"}[cfg.data.source]
    rows = [("validation", "val"), ("test", "test")]
    metrics = ["| split | accuracy | macro-F1 |", "|---|---|---|"]
    metrics += [f"| {name} | {format_value(summary.get(f'{key}/accuracy'))} | {format_value(summary.get(f'{key}/macro_f1'))} |"
                for name, key in rows]
    strategy = cfg.strategy.name if cfg.strategy else "none (supervised)"
    lines = [
        "---", header.rstrip("\n"), "---", "",
        f"# Text classifier fine-tuned with sft from {base}", "",
        f"- Labels ({len(labels)}): {', '.join(map(str, labels))}",
        f"- Data: {data}; {summary.get('n_labeled')} labeled texts"
        + (f" ({cfg.data.labels_per_class} per class)" if cfg.data.labels_per_class else "")
        + f", {summary.get('n_unlabeled')} unlabeled",
        f"- Strategy: {strategy}; classifier head reads: {_HEAD_TEXT.get(head, head)}",
        f"- Selected: {summary.get('best_checkpoint')} (best {summary.get('select_metric')} over "
        f"{summary.get('steps')} steps), seed {cfg.seed}, precision {summary.get('precision')}",
        f"- Command: `{_command(run_dir)}`", "",
        "## Metrics (this checkpoint)", "", *metrics, "",
        "## Use", "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("text-classification", model="PATH/TO/THIS/DIR"{flag})',
        'classify("How far is it from Denver to Aspen?")',
        "```", "",
    ]
    if remote:
        lines += ["The head is sft's pooled classifier (`modeling_sft.py`, in this directory), on the encoder's "
                  "own architecture. transformers runs that file only with `trust_remote_code=True`; without it, "
                  "loading stops instead of building a stock head that would answer differently. "
                  "`sft export RUN format=onnx` writes a copy that needs no code at all (onnxruntime, Optimum).", ""]
    lines += ["Or with sft: `sft predict checkpoint=RUN input=texts.csv output=predictions.jsonl`.", ""]
    return "\n".join(lines)
