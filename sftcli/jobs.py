"""What the Hydra jobs of one command ended in: the failures recorded as jobs end (in this process, or in
a launcher's own processes whose results come back here), from which the CLI takes its exit code."""

from __future__ import annotations

from typing import Any

# command, debug, multirun, failures, exit_code (set by the CLI before Hydra runs); claim (sftcli/rundir.py);
# sweep_dir (sftcli/sweep.py, as Hydra resolved it); jobs_run and jobs_started (in this process)
STATE: dict[str, Any] = {}


def sweep_job_failed(overrides: list[str], message: str, code: int) -> float | None:
    """A sweep job that ran in its own process (submitit) and failed or was preempted: counted with the
    sweep's failures like an in-process job's; returns the value its sweeper gets."""
    STATE["failures"].append(f"[{' '.join(overrides)}] {message}")
    STATE["exit_code"] = STATE["exit_code"] or code
    STATE["remote_jobs"] = True  # jobs ran elsewhere: this process cannot tell what they left
    return missing_value()


def missing_value() -> float | None:
    """A failed sweep job's value. The Optuna sweeper records None as a failed trial and goes on, while a
    NaN makes its study.tell raise and ends the whole sweep; other sweepers get NaN."""
    from hydra.core.hydra_config import HydraConfig

    try:
        target = str(HydraConfig.get().sweeper.get("_target_", ""))
    except ValueError:
        target = ""
    return None if "optuna" in target.lower() else float("nan")
