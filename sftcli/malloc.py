"""glibc malloc settings for the loop: moved to :mod:`sftcli.speedups.malloc`; these names stay until the
engine uses :func:`sftcli.speedups.malloc_tuning`."""

from sftcli.speedups.malloc import (  # noqa: F401
    _libc,
    glibc_steady_state,
    keep_large_blocks,
    largest_parameter_bytes,
)
