"""Finding run directories: the run that `resume=auto` continues."""

from __future__ import annotations

from pathlib import Path

IGNORED_OVERRIDES = ("resume=", "debug=", "hydra.", "allow_resume_mismatch=")


def normalized_overrides(args: list[str]) -> list[str]:
    """The overrides that define a run (order-free), without the ones that only steer this invocation."""
    return sorted(a for a in args if "=" in a and not a.startswith(IGNORED_OVERRIDES) and not a.startswith("-"))


def run_root_from(args: list[str]) -> Path:
    for a in args:
        if a.startswith("run_root="):
            return Path(a.split("=", 1)[1]).expanduser()
    return Path("runs")


def find_resumable_run(args: list[str]) -> Path | None:
    """The newest run dir under run_root made with the same overrides that holds a checkpoint."""
    import yaml

    root = run_root_from(args)
    wanted = normalized_overrides(args)
    if not root.is_dir():
        return None
    candidates = []
    for run in root.iterdir():
        overrides = run / ".hydra" / "overrides.yaml"
        if not overrides.is_file() or not (run / "checkpoints").is_dir():
            continue
        try:
            saved = yaml.safe_load(overrides.read_text()) or []
        except yaml.YAMLError:
            continue
        if normalized_overrides([str(s) for s in saved]) == wanted:
            candidates.append((run.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None
