"""The Hydra jobs of one `sft train` / `sft eval` command: the task function Hydra calls for each job, and
the record of what the jobs ended in (failures, exit code), from which the CLI takes its exit code.

One :class:`Jobs` object per command line, made by the CLI; nothing here is module state. A launcher that
runs jobs in other processes (submitit) gets the object pickled with the task function; the jobs' results
come back to the parent through the launcher, which records a failed remote job with
:meth:`Jobs.remote_job_failed`.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcli.errors import EXIT_PREEMPTED, report_error, user_error

log = logging.getLogger("sft")


@dataclass
class Jobs:
    """Hydra's task function for one command (`jobs(cfg)` runs a job), and what its jobs ended in.

    planned: the typed config of a single run, validated before Hydra made its directory (so the job does
    not parse it again); None in a sweep, whose jobs are each validated when they run. claim: the directory
    claimed before Hydra made it (sftcli/rundir.py), which a refused command releases.
    """

    command: str
    multirun: bool
    debug: bool
    planned: Any = None
    claim: Any = None
    sweep_dir: Path | None = None
    failures: list[str] = field(default_factory=list)
    exit_code: int = 0
    jobs_run: int = 0  # jobs run in this process
    jobs_started: int = 0  # of those, the ones that trained (or completed)
    remote_jobs: bool = False  # jobs ran in other processes: this one cannot tell what they left

    def __call__(self, cfg: Any) -> Any:
        """One Hydra job: run the command on its composed config; a failure is recorded, reported once and,
        in a sweep, turned into the missing value so the sweep goes on."""
        self.jobs_run += 1
        try:
            result = self._run(cfg)
            self.jobs_started += 1
            return result
        except Exception as exc:
            exc = user_error(exc)
            code = getattr(exc, "exit_code", None)
            if code is None:
                if not self.multirun:
                    self._failed(exc, 1)  # a bug: its traceback follows, but what the command made goes first
                    raise
                code = 1
                traceback.print_exception(exc)
            report_error(exc, self.debug and code != 1)
            self._failed(exc, int(code))
            from sftcli import cluster

            if code == EXIT_PREEMPTED and cluster.in_submitit_job():
                cluster.end_preempted_job()  # requeued by submitit, or exit 75: no result either way
            if self.multirun:
                return missing_value()  # the sweep goes on; the job's value is missing
            sys.exit(int(code))

    def _run(self, cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if self.command == "eval":
            from sftcli.commands import run_eval
            from sftcli.config import parse_eval

            return run_eval(self.planned or parse_eval(cfg), run_dir)
        from sftcli.launch import selection_value, train_in_run_dir
        from sftcli.precheck import prepare_train

        typed = self.planned or prepare_train(cfg, run_dir, list(HydraConfig.get().overrides.task))
        summary = train_in_run_dir(typed, run_dir)
        log.info("run dir: %s", run_dir.resolve())  # the last line: where it all went
        return selection_value(summary)

    # ------------------------------------------------------------------------------------------------
    # what the jobs ended in

    def remote_job_failed(self, overrides: list[str], message: str, code: int) -> float | None:
        """A sweep job that ran in its own process (submitit) and failed or was preempted: counted with the
        sweep's failures like an in-process job's; returns the value its sweeper gets."""
        self.failures.append(f"[{' '.join(overrides)}] {message}")
        self.exit_code = self.exit_code or code
        self.remote_jobs = True
        return missing_value()

    def outcome(self) -> int:
        """The command's exit code, once Hydra has run every job; a sweep names its failed jobs and, when
        every one was refused before training, removes the sweep dir it made."""
        if self.multirun and self.failures:
            print(f"sft: {len(self.failures)} job(s) of the sweep failed: " + "; ".join(self.failures),
                  file=sys.stderr)
            if self.jobs_run == len(self.failures) and not self.jobs_started and not self.remote_jobs:
                self.release_sweep()
            return self.exit_code or 1
        return self.exit_code

    def release_sweep(self) -> None:
        """A sweep refused before any job trained made nothing worth keeping: its directory goes, as a
        refused single run's does."""
        if self.claim is not None and self.sweep_dir is not None:
            self.claim.release(self.sweep_dir)

    def _failed(self, exc: BaseException, code: int) -> None:
        from hydra.core.hydra_config import HydraConfig

        try:
            run_dir: Path | None = Path(HydraConfig.get().runtime.output_dir)
            overrides = list(HydraConfig.get().overrides.task)
        except ValueError:
            run_dir, overrides = None, []
        self.failures.append(f"[{' '.join(overrides)}] {exc}")
        self.exit_code = self.exit_code or code
        if run_dir is None or not run_dir.is_dir():
            return
        started = any((run_dir / name).exists() for name in ("checkpoints", "metrics.jsonl", "summary.json"))
        self.jobs_started += started
        if not self.multirun and (self.command == "eval" or not started):
            # A single command refused before it trained (or an evaluation, which writes eval.json last):
            # remove what it made, so a mistyped command leaves nothing behind and touches nothing it found.
            # Sweep jobs keep their directories: the sweep's summary records the failure.
            if self.claim is not None:
                self.claim.release(run_dir)
            return
        if self.command == "eval" or (self.claim is not None and not self.claim.created_by_us(run_dir)):
            return  # a run this command continued keeps its files as they were
        summary = run_dir / "summary.json"
        if not summary.exists():
            status = "preempted" if code == EXIT_PREEMPTED else "failed"
            summary.write_text(json.dumps({"status": status, "error": str(exc), "exit_code": code}, indent=2))
        if not self.multirun:
            print(f"run dir: {run_dir.resolve()}", file=sys.stderr, flush=True)  # what it kept, for resume=auto


def missing_value() -> float | None:
    """A failed sweep job's value. The Optuna sweeper records None as a failed trial and goes on, while a
    NaN makes its study.tell raise and ends the whole sweep; other sweepers get NaN."""
    from hydra.core.hydra_config import HydraConfig

    try:
        target = str(HydraConfig.get().sweeper.get("_target_", ""))
    except ValueError:
        target = ""
    return None if "optuna" in target.lower() else float("nan")


def the_jobs(task_function: Any) -> Jobs | None:
    """The Jobs object behind a launcher's task function (None for another program's task function)."""
    return task_function if isinstance(task_function, Jobs) else None
