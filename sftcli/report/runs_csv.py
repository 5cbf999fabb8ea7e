"""A runs.csv written by an earlier `sft report`, read back as runs: its tables and its label-efficiency
plot can be drawn again once the run dirs are gone (curves need each run's metrics.jsonl, so they are
drawn only where the recorded run dir still exists).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sftcli.errors import UserError
from sftcli.report.collect import Run
from sftcli.report.groups import LPC_KEY

# The columns write_runs_csv puts around the group keys and the metrics (which hold a "/": test/accuracy).
FIXED = ("run", "status", "seed", "overrides", "error")


def is_runs_csv(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def parse_value(key: str, text: str) -> Any:
    """The inverse of show_value: "all" (labels per class) and "-" are None, numbers are numbers."""
    import yaml

    if text == "-" or (key == LPC_KEY and text == "all"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, list, dict)) else text


def read_runs_csv(path: Path) -> list[Run]:
    """One Run per row; its config holds the group keys the report recorded, its summary the metrics."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
            columns = list(rows[0]) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read it as a runs.csv: {exc}") from exc
    missing = [c for c in ("run", "status", "overrides") if c not in columns]
    if missing:
        raise UserError(
            f"{path}: not a runs.csv written by sft report (no column {', '.join(missing)}); "
            "give run dirs, sweep dirs or a report's runs.csv"
        )
    keys = [c for c in columns if c not in FIXED and "/" not in c]
    metrics = [c for c in columns if c not in FIXED and "/" in c]
    runs = []
    for row in rows:
        config = {k: parse_value(k, row[k]) for k in keys}
        config["seed"] = parse_value("seed", row.get("seed") or "-")
        summary: dict[str, Any] = {"status": row["status"]}
        for metric in metrics:
            if row[metric]:
                summary[metric] = float(row[metric])
        runs.append(
            Run(
                path=Path(row["run"]),
                status=row["status"],
                config=config,
                overrides=row["overrides"].split(),
                summary=summary,
                error=row.get("error") or None,
            )
        )
    return runs
