"""Loading a trained checkpoint (or a run dir's best) for `sft eval` and `sft predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftcli import checkpoint as ckpt
from sftcli.errors import ModelError


def load_checkpoint(path_str: str) -> tuple[Path, Any, Any, dict[str, Any]]:
    """(checkpoint dir, model, tokenizer, training config as plain dict) of a checkpoint or run dir."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from sftcli.model import load_checkpoint_model

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per command is noise
    path = ckpt.resolve_checkpoint(Path(path_str).expanduser())
    ckpt.verify(path)
    saved = ckpt.read_sft_state(path)
    model = load_checkpoint_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no loadable tokenizer ({exc})") from exc
    return path, model, tokenizer, saved["config"]


def label_names(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]
