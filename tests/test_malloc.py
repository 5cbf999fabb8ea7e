"""trainer.malloc_tuning: a tensor rebuilt every step reuses its memory instead of faulting in fresh pages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sftcli import malloc

# Counts the minor page faults of 10 allocate-fill-free cycles of a 64 MB tensor (above glibc's 32 MB mmap
# ceiling, like the embedding gradient), before tuning, with tuning, and (128 MB) after undoing it. In a subprocess:
# malloc settings are process-wide.
PROBE = """
import json, resource, torch
from sftcli import malloc
def faults(mb=64):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        t = torch.zeros(mb * 1024 * 1024 // 4)  # fp32
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
out = {"default": faults()}
out["tuned_ok"] = malloc.keep_large_blocks(64 << 20)
faults()  # the first cycle grows the heap once
out["tuned"] = faults()
out["undone_ok"] = malloc.glibc_steady_state()
# Larger than anything the heap kept (trimming may leave some free heap behind): a fresh mmap again.
out["undone"] = faults(128)
print(json.dumps(out))
"""


@pytest.mark.skipif(malloc._libc() is None, reason="not glibc: the settings do not apply")
def test_keep_large_blocks_stops_page_faults_per_step() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["tuned_ok"] and out["undone_ok"]
    pages = 10 * (64 << 20) // 4096  # every cycle faults in all 16k pages of a fresh mmap
    assert out["default"] > 0.5 * pages
    assert out["tuned"] < 0.01 * pages
    assert out["undone"] > 0.5 * 2 * pages
