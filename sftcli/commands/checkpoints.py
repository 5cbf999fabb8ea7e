"""Loading a trained checkpoint (or a run dir's best) for `sft eval` and `sft predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sftcli import checkpoint as ckpt
from sftcli import prior
from sftcli.errors import ModelError


def load_checkpoint(path_str: str) -> tuple[Path, Any, Any, dict[str, Any]]:
    """(checkpoint dir, model, tokenizer, training config as plain dict) of a checkpoint or run dir."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from sftcli.model import load_checkpoint_model

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per command is noise
    given = Path(path_str).expanduser()
    path = ckpt.resolve_checkpoint(given)
    ckpt.verify(path)
    saved = ckpt.read_sft_state(path)
    model = load_checkpoint_model(path)
    shift = _folded_class_prior(given, path)
    if shift is not None:
        # The run folded the unlabeled texts' class prior into its exported head (model.class_prior): the
        # run, or its model/, answers as that export does; a checkpoint named directly is as trained.
        prior.fold_into_head(model, np.asarray(shift))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no loadable tokenizer ({exc})") from exc
    return path, model, tokenizer, saved["config"]


def _folded_class_prior(given: Path, checkpoint: Path) -> list[float] | None:
    """The logit shift that the run of `given` (a run dir or its model/) folded into its export, when
    `checkpoint` is that run's best checkpoint; else None."""
    run = given.parent if given.name == "model" else given
    summary = run / "summary.json"
    if not summary.is_file() or checkpoint.parent.parent.resolve() != run.resolve():
        return None
    data = json.loads(summary.read_text())
    folded = data.get("class_prior") or {}
    if not folded.get("folded") or (run / data.get("best_checkpoint", "")).resolve() != checkpoint.resolve():
        return None
    return folded["shift"]


def label_names(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]
