"""SDPA's math backend for short batches on CPU in bf16 (``trainer.sdpa_math_max_length``).

With attention dropout 0, scaled_dot_product_attention picks its flash kernel on CPU, whose backward is
slow on short texts (MiniLM, one thread, forward + backward: 195 against 112 ms at 32 x 16 tokens, 323
against 268 at 8 x 128; flash wins from about 256 tokens on). Measured 156 against 109 samples/s for
MiniLM on TREC-6 with ``model.dropout=0`` (1.43x). With attention dropout above 0 SDPA picks the math
backend itself, so the default run is unchanged (bitwise). The backward follows the forward's choice.

Where it applies (:func:`why_not`): CPU (never measured on CUDA), bf16 autocast (the precision it was
measured in), batches of at most ``trainer.sdpa_math_max_length`` tokens per text, a model whose attention
goes through SDPA. It patches nothing: the choice goes through torch's public
``torch.nn.attention.sdpa_kernel``, there since torch 2.3 (pyproject asks for more).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sftcli.speedups._gate import unmeasured_device


def why_not(model: Any, device: torch.device | str, precision: str, tc: Any) -> str | None:
    """Why short batches do not train attention on the math backend here, or None when they do
    (`model` None: the model's part is not checked)."""
    if tc.sdpa_math_max_length == 0:
        return "trainer.sdpa_math_max_length=0"
    why = unmeasured_device(device)
    if why:
        return why
    if precision != "bf16":
        return f"precision {precision} (measured in bf16 only)"
    attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if attention != "sdpa":
        return f"attention implementation {attention!r} does not call SDPA"
    return None


def apply() -> contextlib.AbstractContextManager[Any]:
    """The math backend for every scaled_dot_product_attention call inside the ``with`` block."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
