"""glibc malloc settings for the training loop (``trainer.malloc_tuning``).

Every backward pass builds the word-embedding gradient anew as a dense vocabulary x hidden tensor: 47 MB
for MiniLM, 94 MB for BERT-base. glibc serves every block above 32 MB (the ceiling of its adaptive mmap
threshold) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed, so each step pays for
thousands of page faults and for the kernel zeroing those pages before torch fills them with zeros again:
20-90 ms of a 250-450 ms MiniLM step on a 2-core CPU. Served from the heap and kept there after it is
freed, the same block is reused every step without a fault. (jemalloc or tcmalloc through ``LD_PRELOAD``
achieve the same; this needs no extra library.) Elsewhere than glibc the settings are not applied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger("sft")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

_MB = 1 << 20
# Where glibc's adaptive thresholds settle in a long-running process that frees blocks up to 32 MB:
# blocks of up to 32 MB come from the heap, larger ones from mmap, and up to 64 MB of free heap is kept.
GLIBC_STEADY = {M_MMAP_THRESHOLD: 32 * _MB, M_TRIM_THRESHOLD: 64 * _MB, M_MMAP_MAX: 65536}


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


def _apply(libc: ctypes.CDLL | None, settings: dict[int, int]) -> bool:
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())


def largest_parameter_bytes(module: Any) -> int:
    """Bytes of a module's largest parameter (for a BERT encoder, the word embedding and its gradient)."""
    return max((p.numel() * p.element_size() for p in module.parameters()), default=0)


def keep_large_blocks(largest_tensor_bytes: int) -> bool:
    """Serve large tensors from the heap and keep freed ones there, so that a tensor rebuilt every step
    (the embedding gradient) reuses its memory. Returns whether the settings took effect.

    The heap keeps up to twice the largest tensor free (at least 256 MB) before it is trimmed; memory
    beyond that still goes back to the system.
    """
    keep = max(256 * _MB, 2 * largest_tensor_bytes)
    ok = _apply(_libc(), {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: min(keep, 2**31 - 1)})
    if ok:
        log.debug("malloc: large blocks from the heap, up to %d MB of free heap kept", keep // _MB)
    return ok


def glibc_steady_state() -> bool:
    """Undo :func:`keep_large_blocks`: glibc's own thresholds as they settle in a long-running process,
    and the free heap kept until now handed back to the system."""
    libc = _libc()
    ok = _apply(libc, GLIBC_STEADY)
    if ok and libc is not None:
        libc.malloc_trim(0)
    return ok
