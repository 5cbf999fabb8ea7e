"""MLflow through its own client (`trainer.report_to=mlflow`; the `mlflow` or `mlflow-skinny` package).

Where: `MLFLOW_TRACKING_URI` when set; else a SQLite store beside the runs, `<run_root>/mlflow.db`, with
artifacts under `<run_root>/mlruns/`. MLflow 3 deprecates the file store (`./mlruns`, refused from 3.13
unless MLFLOW_ALLOW_FILE_STORE=true) and names SQLite as its local default; `mlflow ui --backend-store-uri
sqlite:///<run_root>/mlflow.db` shows the runs.

What: one MLflow run per sft run, in the experiment `MLFLOW_EXPERIMENT_NAME` when set, else the sweep's
directory name for the jobs of a Hydra multirun, else `sft`. The resolved config as params (dotted keys),
every metric with its step, tags `sft.run_dir` and `sft.status`.

Resume: trackers.json keeps the run id, and a resumed sft run continues that MLflow run. MLflow keeps
every point logged, so the points the interrupted attempt already logged (same key and step) are not
logged again: exact resume makes the training and validation values the same, and timings (perf/*) keep
the first attempt's values.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from sftcli.report.collect import flatten
from sftcli.trackers.base import RunFacts

log = logging.getLogger("sft")

DEFAULT_EXPERIMENT = "sft"
# MLflow's limit of params in one log_batch call.
_PARAMS_PER_BATCH = 100
# The characters MLflow refuses in a metric name (it allows letters, digits, _ - . / : and space).
_REFUSED = re.compile(r"[^/\w.\- :]")
_STATUS = {"completed": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}


def tracking_uri(facts: RunFacts) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite store beside the runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{facts.run_root / 'mlflow.db'}"


def metric_name(key: str) -> str:
    return _REFUSED.sub("_", key)


class MlflowTracker:
    name = "mlflow"

    def __init__(self) -> None:
        self._client: Any = None
        self._run_id: str | None = None
        self._logged: set[tuple[str, int]] = set()  # (key, step) already in a resumed run's history

    def start(self, config: dict[str, Any], facts: RunFacts) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        saved = facts.state.get(self.name) or {}
        # A run continues where it was created, even if MLFLOW_TRACKING_URI changed since.
        uri = saved.get("tracking_uri") or tracking_uri(facts)
        client = MlflowClient(tracking_uri=uri)
        run = self._continued(client, saved.get("run_id"))
        if run is None:
            experiment_id = self._experiment(client, uri, facts)
            tags = {"sft.run_dir": str(facts.run_dir), "sft.status": "running"}
            if facts.group:
                tags["sft.sweep"] = facts.group
            run = client.create_run(experiment_id, run_name=facts.name, tags=tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            client.set_tag(run.info.run_id, "sft.status", "running")
        self._client, self._run_id = client, run.info.run_id
        log.info("mlflow: run %s (experiment %s) at %s", self._run_id, run.info.experiment_id, uri)
        # Params cannot change once logged: a resumed run logs only the ones it does not have.
        have = run.data.params
        params = [Param(k, str(v)) for k, v in flatten(config).items() if k not in have]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(self._run_id, params=params[i:i + _PARAMS_PER_BATCH])
        return {"run_id": self._run_id, "tracking_uri": uri, "experiment_id": run.info.experiment_id}

    def _continued(self, client: Any, run_id: str | None) -> Any:
        """The saved run, with the (key, step) points it holds; None when there is none (a new run)."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            log.warning("mlflow: run %s of trackers.json is not in the store (%s); starting a new MLflow run",
                        run_id, exc)
            return None
        for key in run.data.metrics:
            self._logged.update((key, m.step) for m in client.get_metric_history(run_id, key))
        log.info("mlflow: continuing run %s", run_id)
        return run

    def _experiment(self, client: Any, uri: str, facts: RunFacts) -> str:
        from mlflow.exceptions import MlflowException

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or facts.group or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        # The local store keeps artifacts beside the runs too; a server chooses its own place.
        local = not os.environ.get("MLFLOW_TRACKING_URI") and uri.startswith("sqlite:")
        location = (facts.run_root / "mlruns").as_uri() if local else None
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Another job of the sweep created it first.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), v, now, int(step)) for k, v in values.items()
                   if (metric_name(k), int(step)) not in self._logged]
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics)

    def finish(self, final: dict[str, float], status: str) -> None:
        if self._run_id is None:
            return
        self._client.set_tag(self._run_id, "sft.status", status)
        self._client.set_terminated(self._run_id, status=_STATUS.get(status, "FAILED"))
        self._run_id = None
