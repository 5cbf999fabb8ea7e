"""Speed-ups of the training loop: the only code that patches library internals or process-wide settings.

Each lever is one module with ``why_not(model, device, precision, tc) -> str | None`` (why it does not
apply here: its switch, the device, the model, a library version outside the one its tests run) and an
``apply``. Each is on only where it was measured (CPU; on CUDA none was, so all are off there until
scripts/gpu_check.sh measures them) and has a parity test against the plain computation
(tests/test_speedups.py). Only levers worth at least 3% on their own in the benchmark (docs/benchmark.md) stay:

- :mod:`.cls_only` (``trainer.cls_only_last_layer``, 1.10x): BERT's last layer for the first token alone;
- :mod:`.sdpa_math` (``trainer.sdpa_math_max_length``, 1.43x with ``model.dropout=0``): SDPA's math
  backend for short bf16 batches;
- :mod:`.malloc` (``trainer.malloc_tuning``, 1.05-1.10x): glibc keeps large blocks in the heap.

The loop calls :func:`apply_to_model` once (after any frozen copy of the model is taken, before DDP wraps
it or torch.compile compiles it), :func:`malloc_tuning` around the training loop, and
:func:`attention_context` around each training forward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sftcli.speedups import cls_only, malloc, sdpa_math


def apply_to_model(model: Any, tc: Any, device: torch.device | str, precision: str) -> list[str]:
    """Patch `model` with the levers that apply to it (today the first-token last layer); returns one
    note for each lever that does not apply here, and why (for a debug log)."""
    notes = []
    why = cls_only.why_not(model, device, precision, tc)
    if why is None:
        cls_only.apply(model)
    else:
        notes.append(f"trainer.cls_only_last_layer does not apply ({why}): the last layer runs in full")
    why = sdpa_math.why_not(model, device, precision, tc)
    if why is not None:
        notes.append(f"trainer.sdpa_math_max_length does not apply ({why}): SDPA picks its own backend")
    why = malloc.why_not(model, device, precision, tc)
    if why is not None:
        notes.append(f"trainer.malloc_tuning does not apply ({why}): malloc keeps its settings")
    return notes


def attention_context(device: torch.device | str, precision: str, length: int,
                      tc: Any) -> contextlib.AbstractContextManager[Any]:
    """The attention backend for one training forward of batches `length` tokens long: SDPA's math
    backend where :mod:`.sdpa_math` applies and `length` <= trainer.sdpa_math_max_length, else a context
    that changes nothing."""
    if length > tc.sdpa_math_max_length or sdpa_math.why_not(None, device, precision, tc) is not None:
        return contextlib.nullcontext()
    return sdpa_math.apply()


def malloc_tuning(model: Any, tc: Any, device: torch.device | str | None = None
                  ) -> contextlib.AbstractContextManager[Any]:
    """glibc keeps large blocks (the size of `model`'s largest parameter) in the heap inside the ``with``
    block, and the settings in effect before come back on leaving it (see :mod:`.malloc` for what glibc
    allows to restore). `device`: where the model trains (default: where its first parameter is)."""
    if device is None:
        first = next(iter(model.parameters()), None) if model is not None else None
        device = first.device if first is not None else torch.device("cpu")
    if malloc.why_not(model, device, "", tc) is not None:
        return contextlib.nullcontext()
    return malloc.apply(malloc.largest_parameter_bytes(model) if model is not None else 0)
