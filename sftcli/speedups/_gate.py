"""The gates every speed-up shares: the device it was measured on, and the library versions its tests run."""

from __future__ import annotations

import torch

# The transformers releases that the patches reading its private names are tested with (pyproject's bound).
TRANSFORMERS_TESTED = ("5.0", "6")  # >= 5.0, < 6


def as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def unmeasured_device(device: torch.device | str) -> str | None:
    """Why a speed-up is off on this device: each was measured on CPU only (docs/benchmark.md);
    scripts/gpu_check.sh is the place to measure sft on a CUDA machine."""
    kind = as_device(device).type
    if kind != "cpu":
        return f"device {kind}: measured on CPU only, off until measured there (scripts/gpu_check.sh)"
    return None


def transformers_outside_tested(version: str | None = None) -> str | None:
    """Why transformers `version` (default: the installed one) is not a release the patches are tested
    with, or None when it is."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    low, high = TRANSFORMERS_TESTED
    # A pre-release of 6.0 sorts below 6.0: compare the release it leads to.
    release = Version(Version(version).base_version)
    if Version(low) <= release < Version(high):
        return None
    return f"transformers {version} (the patch is tested with >={low},<{high})"
