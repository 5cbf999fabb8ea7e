"""Which runs a report covers: run dirs found under the paths given (patterns expanded), and earlier
reports' runs.csv files read back row by row."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from sftcli.errors import UserError
from sftcli.report.collect import Run, load_run, run_dirs_under
from sftcli.report.runs_csv import is_runs_csv, read_runs_csv


def _expand(arg: str) -> list[Path]:
    path = Path(arg).expanduser()
    if path.exists():
        return [path]
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True))
        if matches:
            return matches
        raise UserError(f"{arg}: the pattern matches nothing")
    raise UserError(f"{arg}: no such file or directory")


def find_runs(args: Sequence[str]) -> list[Run]:
    """Run dirs under the given paths (recursively), each once, in path order; a .csv path is an earlier
    report's runs.csv, read back row by row."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for arg in args:
        found = 0
        for path in _expand(arg):
            if is_runs_csv(path):
                for run in read_runs_csv(path):
                    found += 1
                    if run.path not in seen:
                        seen.add(run.path)
                        runs.append(run)
                continue
            if path.is_file():
                if path.name not in ("config.yaml", "summary.json"):
                    continue  # another file a pattern matched (a log beside the run dirs): not a run
                path = path.parent  # a run's config.yaml / summary.json names its run
            for run_dir in run_dirs_under(path):
                key = run_dir.resolve()
                found += 1
                if key not in seen:
                    seen.add(key)
                    runs.append(load_run(run_dir))
        if not found:
            raise UserError(f"{arg}: no runs found (a run dir holds config.yaml and summary.json)")
    return runs
