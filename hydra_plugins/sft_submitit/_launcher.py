"""Hydra's submitit launchers (the hydra-submitit-launcher plugin) as sft sweeps use them.

`sft train -m hydra/launcher=submitit_local|submitit_slurm ...` runs through these subclasses: the CLI
registers them with Hydra and adds `hydra.launcher._target_` (sftcli/cluster.py). Hydra takes launchers
only from the hydra_plugins package, hence this module's place. Jobs, executor settings and requeueing are the
plugin's. Only the collection of results differs: the plugin's launch returns `job.results()` of each
job in turn, so the first job that ends without a result (preempted: it saved a checkpoint and exited
75; killed; out of memory) ends the whole sweep with a traceback while other jobs may still run. Here
every job is waited for, and a job without a result, or whose run failed inside it, is one of the
sweep's failed jobs, as with the in-process launcher: the sweep exits with its code, its row in
sweep.csv says why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from sftcli.jobs import Jobs, missing_value, the_jobs

log = logging.getLogger(__name__)


class _CollectingLauncher(plugin.BaseSubmititLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        assert len(job_overrides) > 0
        # Executor and parameters exactly as the plugin's launch builds them.
        init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items()
                                      if k not in init_keys | {"submitit_folder"}})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*params, strict=True))
        record = the_jobs(self.task_function)
        return [_collect(job, list(p[0]), p[2], sweep_dir, record) for job, p in zip(jobs, params, strict=True)]


def _collect(job: Any, overrides: list[str], num: int, sweep_dir: Path, record: Jobs | None) -> JobReturn:
    """Wait for one job. Its JobReturn when it left one, with a failed run (whose value is already the
    missing one) counted in `record` (the command's jobs); else a stand-in holding the value sweepers
    expect for a failed job."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    def sweep_job_failed(overrides: list[str], message: str, code: int) -> float | None:
        return record.remote_job_failed(overrides, message, code) if record is not None else missing_value()

    try:
        ret: JobReturn = job.results()[0]
    except (UncompletedJobError, FailedJobError) as exc:
        lines = str(exc).strip().splitlines()
        message, code = _outcome(_job_dir(sweep_dir, num), lines[0] if lines else type(exc).__name__)
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        ret.return_value = sweep_job_failed(overrides, message, code)
        return ret
    if ret.status == JobStatus.COMPLETED:
        message, code = _outcome(_job_dir(sweep_dir, num), None)
        if code:
            sweep_job_failed(overrides, message, code)
    return ret


def _job_dir(sweep_dir: Path, num: int) -> Path | None:
    from sftcli.sweep import job_num

    for path in sweep_dir.rglob(".hydra/hydra.yaml"):
        if job_num(path.parent.parent, -1) == num:
            return path.parent.parent
    return None


def _outcome(run_dir: Path | None, fallback: str | None) -> tuple[str, int]:
    """(message, exit code) of a job's run from the summary.json it wrote (a run that failed or was
    preempted writes one); exit code 0 for a completed run, and for a job that returned a value but
    wrote no summary (`sft eval`); (fallback, 1) for a job that left neither."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text()) if run_dir else {}
    except (OSError, ValueError):
        summary = {}
    status = summary.get("status") if isinstance(summary, dict) else None
    if status == "completed":
        return "", 0
    if status is None:
        return ("", 0) if fallback is None else (fallback, 1)
    return str(summary.get("error") or status), int(summary.get("exit_code") or 1)


class LocalLauncher(_CollectingLauncher, plugin.LocalLauncher):
    """`hydra/launcher=submitit_local`: jobs as local processes."""


class SlurmLauncher(_CollectingLauncher, plugin.SlurmLauncher):
    """`hydra/launcher=submitit_slurm`: jobs submitted to SLURM."""


def register() -> None:
    """Make the launchers instantiable by Hydra (its plugin scan does not import this module)."""
    from hydra.core.plugins import Plugins

    for clazz in (LocalLauncher, SlurmLauncher):
        Plugins.instance().register(clazz)
