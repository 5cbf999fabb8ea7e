"""Named phases of a run, timed where they happen, for whoever listens (benchmarks/bench.py, a profiler
of the user's): the setup's `read` (the data), `tokenise` (the whole unlabeled pile, when a term reads every
text of it), `teacher_cache` (the frozen encoder's representations of them).

    with timing.listen(lambda name, seconds: print(name, seconds)):
        engine.setup()

A phase costs one clock read when no one listens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

Listener = Callable[[str, float], None]

# The listeners of this process, like logging's handlers: a benchmark adds one around what it measures.
_listeners: list[Listener] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Times the block as phase `name` and tells every listener (only when it finishes without an error)."""
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    for listener in list(_listeners):
        listener(name, seconds)


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """`listener(name, seconds)` hears every phase that ends inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
