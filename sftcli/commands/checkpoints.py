"""Loading a trained checkpoint (or a run dir's best) for `sft eval` and `sft predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sftcli import checkpoint as ckpt
from sftcli import prior
from sftcli.config import from_plain
from sftcli.errors import CheckpointError, ConfigError
from sftcli.runfiles import Summary, read_record


def load_checkpoint(path_str: str) -> tuple[Path, Any, Any, dict[str, Any]]:
    """(checkpoint dir, model, tokenizer, training config as plain dict) of a checkpoint or run dir."""
    from transformers.utils import logging as hf_logging

    from sftcli.model import load_checkpoint_model, load_checkpoint_tokenizer

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per command is noise
    given = Path(path_str).expanduser()
    path = ckpt.resolve_checkpoint(given)
    ckpt.verify(path)
    saved = ckpt.read_sft_state(path)
    try:
        from_plain(saved["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path / ckpt.SFT_STATE}: its training config is not valid: {exc}") from None
    model = load_checkpoint_model(path)
    shift = _folded_class_prior(given, path, model.config.num_labels)
    if shift is not None:
        # The run folded the unlabeled texts' class prior into its exported head (model.class_prior): the
        # run, or its model/, answers as that export does; a checkpoint named directly is as trained.
        prior.fold_into_head(model, np.asarray(shift))
    tokenizer = load_checkpoint_tokenizer(path)
    return path, model, tokenizer, saved["config"]


def _folded_class_prior(given: Path, checkpoint: Path, num_labels: int) -> list[float] | None:
    """The logit shift that the run of `given` (a run dir or its model/) folded into its export, when
    `checkpoint` is that run's best checkpoint; else None."""
    run = given.parent if given.name == "model" else given
    summary = run / "summary.json"
    if not summary.is_file() or checkpoint.parent.parent.resolve() != run.resolve():
        return None
    data = read_record(summary, Summary)
    folded = data.class_prior
    if folded is None or not folded.folded or (run / (data.best_checkpoint or "")).resolve() != checkpoint.resolve():
        return None
    if folded.shift is None or len(folded.shift) != num_labels:
        raise CheckpointError(f"{summary} is damaged: class_prior.shift must hold one number per label "
                              f"({num_labels}), got {folded.shift}")
    return folded.shift


def label_names(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]
