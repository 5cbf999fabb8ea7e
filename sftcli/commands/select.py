"""`sft select`: the texts to label next, as a CSV a person fills in and `sft train` reads back.

With a run (`checkpoint=RUN`) the run's model scores a seeded sample of the pool (its unlabeled texts, or
`pool=FILE`) with the probabilities its export gives, and a strategy (sftcli/selection.py) picks n of them;
without one (a cold start) the frozen encoder's embeddings are clustered and each cluster gives the text
nearest its centre. Texts already labeled (the run's labeled, validation and test texts), exact copies
(case and spacing aside) and near copies (embedding cosine >= near_duplicate) are never proposed.

Beside the CSV, FILE.selection.json records the round (the predicted label of every scored text, by a
hash of the text), so the next round's `previous=FILE` can say how many predictions changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftcli.commands.predict import dotlist_arguments, in_output_folder, read_rows
from sftcli.config import parse_select
from sftcli.errors import ConfigError, DataError
from sftcli.selection import Choice, choose, normalise_text, prediction_change

log = logging.getLogger("sft")

SUMMARY_SUFFIX = ".selection.json"


@dataclass
class Pool:
    """The candidates: a seeded sample of the pool, exact duplicates (of each other and of labeled texts)
    removed; `read` texts were read, `sampled` of them kept, `dropped` exact duplicates among those."""

    texts: list[str]
    read: int
    sampled: int
    dropped: int


def summary_path(output: Path) -> Path:
    return output.with_name(output.stem + SUMMARY_SUFFIX)


def run_select(args: list[str]) -> int:
    sc = parse_select(dotlist_arguments("select", args))
    outp = Path(sc.output).expanduser()
    if outp.suffix.lower() != ".csv":
        raise ConfigError(f"output: {outp} must end in .csv (a table a person fills in)")
    for path in (outp, summary_path(outp)):
        if path.exists():
            # A round's CSV may already hold a person's labels: never written over.
            raise ConfigError(f"output: {path} already exists (it may hold labels already given); name a new file")
    previous = _previous_predictions(Path(sc.previous).expanduser()) if sc.previous else None
    return in_output_folder(outp, lambda: _select(sc, outp, previous))


def _select(sc: Any, outp: Path, previous: dict[str, str] | None) -> int:
    from sftcli.commands.predict import score_texts
    from sftcli.dist import pick_device

    rng = np.random.default_rng([sc.seed, 29])
    device = pick_device(sc.device, 0)
    if sc.checkpoint is not None:
        model, tokenizer, names, max_length, columns, labeled, default_pool, source = _from_run(sc)
    else:
        model, tokenizer, max_length, source = _cold_start_encoder(sc.encoder)
        names, columns, labeled, default_pool = None, (sc.text_column or "text", "label"), [], None
    model.to(device).eval()
    pool = _read_pool(sc, columns[0], default_pool, labeled, rng)
    if not pool.texts:
        where = sc.pool or "the run's unlabeled texts"
        raise DataError(f"pool: {where} has no text that is not labeled already")

    def score(texts: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        probs, vectors = score_texts(model, tokenizer, texts, None, sc.batch_size, max_length, device, sc.precision,
                                     embed=True)
        assert vectors is not None
        return probs, vectors

    probs, vectors = score(pool.texts)
    labeled_vectors = score(labeled)[1] if labeled else None
    choices, near = choose(sc.strategy, sc.n, vectors, probs, names, labeled_vectors, sc.near_duplicate, sc.seed)
    predictions = {} if probs is None or names is None else {
        _text_key(t): names[int(i)] for t, i in zip(pool.texts, probs.argmax(1), strict=True)}
    _write_csv(outp, columns, pool.texts, choices, probs, names)
    record = {"strategy": sc.strategy, "n": sc.n, "chosen": len(choices), "checkpoint": sc.checkpoint,
              "model": source, "pool": sc.pool, "pool_texts_read": pool.read, "scored": len(pool.texts),
              "exact_duplicates_dropped": pool.dropped, "near_duplicates_passed_over": near, "seed": sc.seed,
              "predictions": predictions}
    tmp = summary_path(outp).with_name(summary_path(outp).name + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(summary_path(outp))
    lines = [f"{len(choices)} texts to label written to {outp} (strategy={sc.strategy}, {source})",
             f"pool: {pool.read:,} texts read, {pool.sampled:,} sampled ({pool.sampled / max(pool.read, 1):.1%}), "
             f"{pool.dropped:,} dropped as copies of labeled texts or of each other, {len(pool.texts):,} scored; "
             f"{near:,} passed over as near copies (cosine >= {sc.near_duplicate:g})"]
    if previous is not None and predictions:
        shared, changed, kappa = prediction_change(previous, predictions)
        if shared:
            lines.append(f"since {sc.previous}: {changed:,} of the {shared:,} texts both rounds scored changed their "
                         f"predicted label ({changed / shared:.1%}; Cohen's kappa {kappa:.3f}); once this stays "
                         "near 0% (kappa near 1) round after round, more labels stop paying")
        else:
            lines.append(f"since {sc.previous}: no text was scored in both rounds (another pool or sample)")
    if len(choices) < sc.n:
        lines.append(f"only {len(choices)} of the {sc.n} asked for: the rest of the pool is labeled already or a "
                     "near copy of a text that is")
    print("\n".join(lines))
    return 0


def _from_run(sc: Any) -> tuple[Any, Any, list[str], int, tuple[str, str], list[str], Any, str]:
    """(model, tokenizer, label names, max length, (text column, label column), the run's labeled texts,
    its unlabeled texts, a description) of the run or checkpoint `sc.checkpoint`."""
    from sftcli.commands.checkpoints import label_names, load_checkpoint
    from sftcli.config import from_plain
    from sftcli.data import load_data
    from sftcli.onnx_export import is_onnx_export

    if is_onnx_export(Path(sc.checkpoint).expanduser()):
        raise ConfigError(f"checkpoint: {sc.checkpoint} is an ONNX export, which gives no embeddings to tell near "
                          "copies apart; name the run it was exported from")
    path, model, tokenizer, saved = load_checkpoint(sc.checkpoint)
    cfg = from_plain(saved)
    if cfg.data.text_pair_column:
        raise ConfigError(f"checkpoint: the run reads text pairs (data.text_pair_column="
                          f"{cfg.data.text_pair_column}); sft select proposes single texts")
    data = load_data(cfg.data, cfg.seed)
    labeled = [t for ts in (data.labeled, data.validation, data.test) if ts is not None for t in ts.texts]
    columns = (sc.text_column or cfg.data.text_column, cfg.data.label_column)
    return (model, tokenizer, label_names(model), int(cfg.model.max_length), columns, labeled, data.unlabeled,
            f"the model of {path}")


def _cold_start_encoder(name: str | None) -> tuple[Any, Any, int, str]:
    """(frozen encoder, tokenizer, max length, description) for a cold start: `name` or the embedded model."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from sftcli.config import ModelConfig
    from sftcli.model import load_tokenizer, model_location, resolve_max_length

    cfg = ModelConfig(source="hf", name_or_path=name, max_length="auto") if name else ModelConfig(max_length="auto")
    where = model_location(cfg)
    tokenizer = load_tokenizer(cfg)
    max_length, _ = resolve_max_length(cfg)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per command is noise
    return AutoModel.from_pretrained(where), tokenizer, max_length, f"the frozen encoder {where}"


def _read_pool(sc: Any, text_column: str, default: Any, labeled: list[str], rng: np.random.Generator) -> Pool:
    """A seeded sample of at most sc.pool_sample texts of the pool, read without holding the whole pool."""
    from sftcli.data.textsets import take_texts

    if sc.pool is None:
        if default is None or len(default) == 0:
            raise DataError("the run has no unlabeled texts to choose from; give pool=FILE")
        total = len(default)
        keep = np.sort(rng.choice(total, size=min(sc.pool_sample, total), replace=False))
        sample = take_texts(default.texts, keep)
    else:
        sample, total = _reservoir(_pool_texts(Path(sc.pool).expanduser(), text_column), sc.pool_sample, rng)
    seen = {normalise_text(t) for t in labeled}
    texts = []
    for text in sample:
        key = normalise_text(text)
        if key and key not in seen:
            seen.add(key)
            texts.append(text)
    return Pool(texts, total, len(sample), len(sample) - len(texts))


def _pool_texts(path: Path, column: str) -> Any:
    for row in read_rows(path, (column,), key="pool"):
        value = row.get(column)
        if value is not None and str(value).strip():
            yield str(value)


def _reservoir(texts: Any, k: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """(a uniform sample of k texts in their pool order, how many texts there were): one pass, k held."""
    kept: list[tuple[int, str]] = []
    n = 0
    for n, text in enumerate(texts, 1):
        if len(kept) < k:
            kept.append((n, text))
        else:
            j = int(rng.integers(0, n))
            if j < k:
                kept[j] = (n, text)
    return [t for _, t in sorted(kept)], n


def _text_key(text: str) -> str:
    return hashlib.sha1(normalise_text(text).encode()).hexdigest()[:16]


def _write_csv(outp: Path, columns: tuple[str, str], texts: list[str], choices: list[Choice],
               probs: np.ndarray | None, names: list[str] | None) -> None:
    """The round's table, written whole under a temporary name first: no half-written file is left."""
    text_col, label_col = columns
    tmp = outp.with_name(outp.name + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([text_col, label_col, "predicted_label", "probability", "score", "reason"])
            for c in choices:
                pred, prob = ("", "")
                if probs is not None and names is not None:
                    best = int(probs[c.index].argmax())
                    pred, prob = names[best], f"{probs[c.index, best]:.4f}"
                writer.writerow([texts[c.index], "", pred, prob, f"{c.score:.4f}", c.reason])
        tmp.replace(outp)
    finally:
        tmp.unlink(missing_ok=True)


def _previous_predictions(path: Path) -> dict[str, str]:
    summary = path if path.name.endswith(SUMMARY_SUFFIX) else summary_path(path)
    try:
        data = json.loads(summary.read_text())
    except FileNotFoundError:
        raise ConfigError(f"previous: {summary} not found (sft select writes it beside the CSV it writes)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"previous: {summary} cannot be read ({exc})") from None
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, dict):
        raise ConfigError(f"previous: {summary} is damaged: it lacks the round's predictions")
    return {str(k): str(v) for k, v in predictions.items()}
