"""glibc malloc settings for the training loop (``trainer.malloc_tuning``).

Every backward pass builds the word-embedding gradient anew as a dense vocabulary x hidden tensor: 47 MB
for MiniLM, 94 MB for BERT-base. glibc serves every block above 32 MB (the ceiling of its adaptive mmap
threshold) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed, so each step pays for
thousands of page faults and for the kernel zeroing those pages before torch fills them with zeros again:
20-90 ms of a 250-450 ms MiniLM step on a 2-core CPU. Served from the heap and kept there after it is
freed, the same block is reused every step without a fault. (jemalloc or tcmalloc through ``LD_PRELOAD``
achieve the same; this needs no extra library.) Measured 1.05x (fp32) and 1.10x (bf16) more tokens/s for
MiniLM on CPU (docs/benchmark.md).

Where it applies (:func:`why_not`): a process whose C library is glibc (elsewhere other allocators, with
no mallopt semantics to rely on), training on CPU (on CUDA the gradients live in the GPU's memory, and it
was never measured there). mallopt's ``M_MMAP_MAX`` and ``M_TRIM_THRESHOLD`` have meant the same since
glibc 2.0, so no glibc version is excluded. The settings are process-wide: :func:`apply` sets them for the
length of a ``with`` block and restores what was in effect before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from sftcli.speedups._gate import unmeasured_device

log = logging.getLogger("sft")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

_MB = 1 << 20
# Where glibc's adaptive thresholds settle in a long-running process that frees blocks up to 32 MB:
# blocks of up to 32 MB come from the heap, larger ones from mmap, and up to 64 MB of free heap is kept
# (M_MMAP_MAX is glibc's documented default).
GLIBC_STEADY = {M_MMAP_THRESHOLD: 32 * _MB, M_TRIM_THRESHOLD: 64 * _MB, M_MMAP_MAX: 65536}
# How a user sets them before the process starts: GLIBC_TUNABLES names, and the older variables.
_TUNABLES = {M_MMAP_THRESHOLD: "glibc.malloc.mmap_threshold", M_TRIM_THRESHOLD: "glibc.malloc.trim_threshold",
             M_MMAP_MAX: "glibc.malloc.mmap_max"}
_VARIABLES = {M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
              M_MMAP_MAX: "MALLOC_MMAP_MAX_"}

# What sft has set through mallopt in this process and not undone (the settings cannot be read back).
_in_effect: dict[int, int] = {}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        # gnu_get_libc_version exists only in glibc: musl and others have other allocators and no mallopt
        # semantics to rely on.
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


def why_not(model: Any, device: torch.device | str, precision: str, tc: Any) -> str | None:
    """Why the malloc settings do not apply here, or None when they do (`model` and `precision` do not
    matter: any model's largest gradient gains, in any dtype)."""
    if not tc.malloc_tuning:
        return "trainer.malloc_tuning=false"
    why = unmeasured_device(device)
    if why:
        return why
    if _libc() is None:
        return "the C library is not glibc"
    return None


def _apply(libc: ctypes.CDLL | None, settings: dict[int, int]) -> bool:
    if libc is None:
        return False
    ok = True
    for param, value in settings.items():
        if libc.mallopt(param, value) == 1:
            _in_effect[param] = value
        else:
            ok = False
    return ok


def largest_parameter_bytes(module: Any) -> int:
    """Bytes of a module's largest parameter (for a BERT encoder, the word embedding and its gradient)."""
    return max((p.numel() * p.element_size() for p in module.parameters()), default=0)


def _keep_settings(largest_tensor_bytes: int) -> dict[int, int]:
    # The heap keeps up to twice the largest tensor free (at least 256 MB) before it is trimmed; memory
    # beyond that still goes back to the system.
    keep = max(256 * _MB, 2 * largest_tensor_bytes)
    return {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: min(keep, 2**31 - 1)}


def keep_large_blocks(largest_tensor_bytes: int) -> bool:
    """Serve large tensors from the heap and keep freed ones there, so that a tensor rebuilt every step
    (the embedding gradient) reuses its memory; until :func:`restore` or :func:`glibc_steady_state`.
    Returns whether the settings took effect. :func:`apply` is the form that restores by itself."""
    settings = _keep_settings(largest_tensor_bytes)
    ok = _apply(_libc(), settings)
    if ok:
        log.debug("malloc: large blocks from the heap, up to %d MB of free heap kept",
                  settings[M_TRIM_THRESHOLD] // _MB)
    return ok


def glibc_steady_state() -> bool:
    """glibc's own thresholds as they settle in a long-running process, and the free heap kept until now
    handed back to the system (a common starting point, e.g. for each arm of benchmarks/bench.py)."""
    libc = _libc()
    ok = _apply(libc, GLIBC_STEADY)
    if ok and libc is not None:
        libc.malloc_trim(0)
    return ok


def environment_settings(environ: Mapping[str, str] | None = None) -> dict[int, int]:
    """The mallopt settings the process was started with through GLIBC_TUNABLES or MALLOC_*_ variables
    (GLIBC_TUNABLES wins where both name one); values that are not integers are left out."""
    env = os.environ if environ is None else environ
    out: dict[int, int] = {}
    for param, name in _VARIABLES.items():
        value = _int(env.get(name))
        if value is not None:
            out[param] = value
    tunables = dict(item.partition("=")[::2] for item in env.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    for param, name in _TUNABLES.items():
        value = _int(tunables.get(name))
        if value is not None:
            out[param] = value
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(text, 0) if text else None
    except ValueError:
        return None


def previous_settings(params: list[int]) -> dict[int, int]:
    """What to go back to for each mallopt parameter in `params`.

    glibc has no call that reads a mallopt setting, and none that turns its adaptive thresholds back on
    once a mallopt call has fixed them (setting any of M_MMAP_MAX, M_TRIM_THRESHOLD or M_MMAP_THRESHOLD
    stops the adaptation for the rest of the process). So, per parameter: the value sft itself set
    earlier in this process, else the one the process was started with (GLIBC_TUNABLES, MALLOC_*_), else
    where glibc's adaptive value settles in a process that frees blocks of up to 32 MB (GLIBC_STEADY:
    for M_MMAP_MAX, glibc's documented default 65536; the thresholds, their adaptive ceiling), which is
    where a training process would have left them."""
    started = environment_settings()
    return {p: _in_effect.get(p, started.get(p, GLIBC_STEADY[p])) for p in params}


def restore(settings: dict[int, int]) -> bool:
    """Set `settings` (from :func:`previous_settings`) again; where it lowers the trim threshold, the free
    heap kept until now goes back to the system."""
    libc = _libc()
    trim_before = _in_effect.get(M_TRIM_THRESHOLD)
    ok = _apply(libc, settings)
    lowered = M_TRIM_THRESHOLD in settings and (trim_before is None or settings[M_TRIM_THRESHOLD] < trim_before)
    if ok and libc is not None and lowered:
        libc.malloc_trim(0)
    return ok


@contextlib.contextmanager
def apply(largest_tensor_bytes: int) -> Iterator[bool]:
    """Inside the block, large tensors come from the heap and freed ones stay there (see the module's
    docstring); on leaving it, the settings in effect before are restored (:func:`previous_settings`).
    Yields whether the settings took effect. Nested blocks restore the outer block's settings."""
    settings = _keep_settings(largest_tensor_bytes)
    before = previous_settings(list(settings))
    ok = keep_large_blocks(largest_tensor_bytes)
    try:
        yield ok
    finally:
        restore(before)  # also after a partial failure: whatever did change goes back
