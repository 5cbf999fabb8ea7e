"""The sweep-level summary: a Hydra callback that writes `sweep.csv` into the sweep dir when a multirun ends.

Registered in configs/train.yaml under `hydra.callbacks.sweep_summary` (drop it with
`~hydra.callbacks.sweep_summary`). One row per job: its number, overrides, status, selection metric and
test metrics, and the error of a failed job. Rows are read back from the job dirs rather than collected
in memory, so they are the same whichever launcher ran the jobs (in-process, joblib, a cluster), and a
job whose exception escaped (no summary.json) still gets a row.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("sft")

SWEEP_FILE = "sweep.csv"
FIELDS = (
    "job",
    "status",
    "overrides",
    "select_metric",
    "select_value",
    "test/accuracy",
    "test/macro_f1",
    "error",
    "run_dir",
)


class SweepSummary(Callback):
    """Writes <sweep dir>/sweep.csv at the end of a multirun (and after every job of an in-process one,
    so a sweep cut short by Ctrl-C still leaves the rows of the jobs that ran)."""

    def __init__(self, filename: str = SWEEP_FILE) -> None:
        self.filename = filename
        # Jobs whose exception reached Hydra (the CLI normally catches them): job num -> error.
        self.job_errors: dict[int, str] = {}
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        # Resolve ${now:...} here, once: Hydra caches it on this config, so the jobs agree with it.
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        try:
            num = int(config.hydra.job.num)
        except Exception:  # RUN mode or a launcher without job numbers: nothing to record
            return
        if job_return is not None and job_return.status == JobStatus.FAILED:
            exc = getattr(job_return, "_return_value", None)  # .return_value would re-raise it
            self.job_errors[num] = f"{type(exc).__name__}: {exc}"
        if self.sweep_dir is not None and self.sweep_dir.is_dir():
            self._write(quiet=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            self.sweep_dir = Path(str(config.hydra.sweep.dir))
        if not self.sweep_dir.is_dir():
            return  # no job ran (e.g. the sweep's overrides failed to parse)
        self._write(quiet=False)

    def _write(self, quiet: bool) -> None:
        assert self.sweep_dir is not None
        try:
            rows = sweep_rows(self.sweep_dir, self.job_errors)
            path = write_sweep_csv(self.sweep_dir / self.filename, rows)
        except OSError as exc:  # a summary must never turn a finished sweep into a crash
            print(f"sft: could not write {self.filename} in {self.sweep_dir}: {exc}", file=sys.stderr)
            return
        if not quiet:
            failed = sum(1 for r in rows if r["status"] != "completed")
            print(f"sft: sweep summary ({len(rows)} job(s), {failed} not completed): {path}", file=sys.stderr)


def job_num(run_dir: Path, fallback: int) -> int:
    from sftcli.report import read_yaml

    hydra_cfg = read_yaml(run_dir / ".hydra" / "hydra.yaml")
    try:
        return int(hydra_cfg["hydra"]["job"]["num"])
    except (TypeError, KeyError, ValueError):
        return int(run_dir.name) if run_dir.name.isdigit() else fallback


def sweep_rows(sweep_dir: Path, job_errors: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per job dir under the sweep dir (any subdir layout: the job dirs hold .hydra/)."""
    from sftcli.report import load_run

    job_errors = job_errors or {}
    job_dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})
    rows = []
    for i, run_dir in enumerate(job_dirs):
        run = load_run(run_dir)
        num = job_num(run_dir, i)
        # One line per row: multi-line validation messages stay readable in spreadsheets and grep.
        status, error = run.status, " ".join((run.error or "").split())
        if num in job_errors and status != "completed":
            status, error = "failed", " ".join(job_errors[num].split())
        rows.append(
            {
                "job": num,
                "status": status,
                "overrides": " ".join(run.overrides),
                "select_metric": run.summary.get("select_metric", ""),
                "select_value": run.summary.get("select_value"),
                "test/accuracy": run.summary.get("test/accuracy"),
                "test/macro_f1": run.summary.get("test/macro_f1"),
                "error": error,
                "run_dir": str(run_dir.relative_to(sweep_dir)),
            }
        )
    return sorted(rows, key=lambda r: r["job"])


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import os

    # A per-process temporary name: launchers that run jobs in parallel may write concurrently.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in FIELDS})
    tmp.replace(path)  # readers never see a half-written file
    return path
