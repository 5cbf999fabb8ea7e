"""Reading runs: the run dirs under the given paths (sweep dirs searched recursively, globs expanded), each
read into a :class:`Run` with its flattened config, overrides and summary. Also used by sftcli.sweep.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# loss.weight / loss.tau are `${lambda}` / `${tau}` in YAML: the same knob twice, shown once.
ALIASES = {"loss.weight": "lambda", "loss.tau": "tau"}
STRATEGY_KEY = "strategy"


@dataclass
class Run:
    """One run directory as written by `sft train` (completed, failed, or without a summary yet)."""

    path: Path
    status: str  # completed | failed | incomplete
    config: dict[str, Any]  # flattened dotted keys, see flat_config()
    overrides: list[str]
    summary: dict[str, Any]
    error: str | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.summary.get("seed"))


def read_yaml(path: Path) -> Any:
    """A YAML file's content, or None when it cannot be read or parsed."""
    import yaml  # PyYAML ships with omegaconf/Hydra

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's config.yaml as dotted keys, with `strategy` = strategy.name or "none" (the baseline)."""
    flat = flatten(raw)
    flat[STRATEGY_KEY] = flat.pop("strategy.name", None) or "none"
    for alias, canonical in ALIASES.items():
        if alias in flat and flat.get(canonical) == flat[alias]:
            del flat[alias]
    return flat


def load_run(path: Path) -> Run:
    """Read a run dir. A job that failed config validation has summary.json but no config.yaml: its
    overrides still come from .hydra/overrides.yaml and its config from Hydra's .hydra/config.yaml."""
    summary: dict[str, Any] = {}
    error = None
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            summary, error = {"status": "failed"}, f"unreadable summary.json: {exc}"
    if not summary:
        status = "incomplete"
        error = "no summary.json (still running, or the process was killed)"
    else:
        status = str(summary.get("status", "completed"))
        if status != "completed":
            error = error or str(summary.get("error") or "failed without an error message")
    raw = read_yaml(path / "config.yaml")
    if not isinstance(raw, dict):
        raw = read_yaml(path / ".hydra" / "config.yaml")  # unresolved, but names the choices
    overrides = read_yaml(path / ".hydra" / "overrides.yaml")
    return Run(
        path=path,
        status=status,
        config=flat_config(raw) if isinstance(raw, dict) else {},
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        summary=summary,
        error=error,
    )


def is_run_dir(path: Path) -> bool:
    """A `sft train` run: config.yaml, or a summary.json next to Hydra's record (a job that failed config
    validation). `sft eval` dirs (eval.json, no summary.json) are not runs."""
    if (path / "config.yaml").is_file():
        return True
    return (path / "summary.json").is_file() and (path / ".hydra" / "overrides.yaml").is_file()


def run_dirs_under(path: Path) -> Iterable[Path]:
    if is_run_dir(path):
        yield path
        return
    candidates = {p.parent for p in path.rglob("summary.json")} | {
        p.parent for p in path.rglob("config.yaml")
    }
    for run_dir in sorted(candidates, key=_natural):
        # Skip checkpoint dirs (their config.json is not ours), Hydra's own .hydra/config.yaml, and what a
        # tracker keeps inside a run (W&B's wandb/run-*/files/config.yaml): a run never holds another.
        inside_run = any(is_run_dir(p) for p in run_dir.parents if p.is_relative_to(path))
        if run_dir.name != ".hydra" and is_run_dir(run_dir) and not inside_run:
            yield run_dir


def _natural(path: Path) -> list[Any]:
    # Sweep job dirs are 0, 1, ..., 10: sort them as numbers, not strings.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]

