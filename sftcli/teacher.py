"""The frozen pretrained encoder's representations of the unlabeled set, computed once and cached.

The frozen encoder is deterministic (eval mode, no dropout), so its pooled representation of each
unlabeled text never changes during training. It is computed once, stored on disk as a float32 .npy
(read by position, row by row, so it scales past RAM) under a key made of the encoder's weights, the
tokenizer, max length, pooling and the data fingerprint, and reused by later runs and sweep jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sftcli import dist
from sftcli.data import NpyRows, TokenRows, collate
from sftcli.evaluate import autocast
from sftcli.model import pool

log = logging.getLogger("sft")


@torch.no_grad()
def compute_representations(encoder: torch.nn.Module, enc: TokenRows, pooling: str, pad_id: int,
                            device: torch.device, batch_size: int, precision: str, out: np.ndarray) -> None:
    """Fill `out[i]` with the pooled representation of example i (length-sorted batches)."""
    encoder.eval()
    order = np.argsort(enc.lengths(), kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(enc, index, pad_id).items()}
        with autocast(device, precision):
            hidden = encoder(**batch).last_hidden_state
        out[index] = pool(hidden.float(), batch["attention_mask"], pooling).cpu().numpy()


def teacher_representations(encoder: torch.nn.Module, enc: TokenRows, pooling: str, pad_id: int, cache_dir: Path,
                            key_parts: tuple[str, ...], env: dist.DistEnv, batch_size: int = 128,
                            precision: str = "fp32") -> NpyRows:
    """The cached [N, hidden] float32 representations, computing them on a miss. Rows are read from the
    file by position (NpyRows: `reps[index]` gives an array), not through a memory map."""
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:24]
    folder = cache_dir / "teacher"
    path = folder / f"{key}.npy"
    if not path.exists():
        if env.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            hidden = _hidden_size(encoder)
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
            os.close(fd)
            try:
                out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.float32, shape=(len(enc), hidden))
                compute_representations(encoder.to(env.device), enc, pooling, pad_id, env.device, batch_size,
                                        precision, out)
                out.flush()
                del out
                (folder / f"{key}.json").write_text(json.dumps({"parts": list(key_parts), "n": len(enc)}))
                os.replace(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
            log.debug("teacher cache: %d representations computed in %.1fs -> %s", len(enc),
                     time.perf_counter() - t0, path)
            encoder.to("cpu")
        _wait_for(path, env)
    else:
        log.debug("teacher cache: reusing %s", path)
    reps = np.load(path, mmap_mode="r")
    if reps.shape[0] != len(enc):
        raise RuntimeError(f"teacher cache {path} holds {reps.shape[0]} rows for {len(enc)} texts")
    return NpyRows(reps)


def _wait_for(path: Path, env: dist.DistEnv) -> None:
    # Other ranks wait for rank 0's file instead of a collective, whose short timeout (meant to catch
    # dead peers in the loop) could expire while a large cache is computed.
    if env.is_main:
        return
    while not path.exists():
        time.sleep(0.2)


def _hidden_size(encoder: torch.nn.Module) -> int:
    config = getattr(encoder, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if size is None:
        raise RuntimeError("cannot tell the encoder's hidden size from its config")
    return int(size)

