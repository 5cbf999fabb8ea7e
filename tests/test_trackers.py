"""Experiment trackers (trainer.report_to): through the real CLI on the tiny model, each tracker's record is
read back with the tracker's own reader and compared with metrics.jsonl; missing packages and unknown
names end with exit code 2 before training."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY, read_jsonl, run_dirs

from sftcli.config import TrainerConfig
from sftcli.errors import ConfigError


def needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment with no tracker account or server: MLflow's local store, W&B offline (no key, no
    netrc entry), W&B's own config and cache under tmp_path. (Unset, not empty: W&B refuses an empty
    WANDB_MODE.)"""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT",
                 "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return {"NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the tests that name theirs through MLFLOW_TRACKING_URI, as a team's server
    would be: its tables are made once (seconds), not by every test."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def jsonl_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]} of every numeric value in metrics.jsonl (null = a NaN, none here)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in event.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((event["step"], float(value)))
    return out


def mlflow_client(run_dir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    return MlflowClient(tracking_uri=state["tracking_uri"]), state


def mlflow_series(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def tensorboard_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]} of the run dir's TensorBoard events, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {key: [(e.step, e.value) for e in events.Scalars(key)] for key in events.Tags()["scalars"]}


def assert_close(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    # TensorBoard keeps float32: the same steps, the values to float32 precision.
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


@needs("mlflow", "tensorboard")
def test_mlflow_and_tensorboard_get_every_metric_of_a_run(sft, tmp_path, offline) -> None:
    proc = sft("train", *TINY, "trainer.report_to=[mlflow,tensorboard]", env=offline)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    expected = jsonl_series(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())

    client, state = mlflow_client(run_dir)
    # The local store: SQLite beside the runs (MLflow 3 deprecates the ./mlruns file store).
    assert state["tracking_uri"] == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    experiment = client.get_experiment_by_name("sft")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == state["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["sft.status"] == "completed" and run.data.tags["sft.run_dir"] == str(run_dir.resolve())
    params = run.data.params
    assert params["trainer.max_steps"] == "4" and params["model.source"] == "tiny"
    lr = yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"]
    assert params["trainer.batch_size"] == "8" and params["optim.lr"] == str(float(lr))
    assert params["trainer.report_to"] == "['mlflow', 'tensorboard']"
    # Every metric with its steps and values as metrics.jsonl has them, nothing else.
    assert mlflow_series(client, run) == expected
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4] and [s for s, _ in expected["val/accuracy"]] == [2, 4]
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(summary["test/accuracy"], abs=0)

    board = tensorboard_series(run_dir)
    assert set(board) == set(expected)
    for key, points in board.items():
        assert_close(points, expected[key])


@needs("mlflow")
def test_a_sweep_is_one_mlflow_experiment_with_a_run_per_job(sft, tmp_path, offline, mlflow_store) -> None:
    proc = sft("train", "-m", *TINY, "seed=0,1", "trainer.report_to=[mlflow]",
               env={**offline, "MLFLOW_TRACKING_URI": mlflow_store})
    assert proc.returncode == 0, proc.stderr
    jobs = run_dirs(tmp_path / "runs")
    assert len(jobs) == 2
    sweep = jobs[0].parent
    client, state = mlflow_client(jobs[0])
    assert state["tracking_uri"] == mlflow_store and not (tmp_path / "runs" / "mlflow.db").exists()
    experiment = client.get_experiment_by_name(sweep.name)  # named after the sweep dir
    assert experiment is not None
    runs = {Path(r.data.tags["sft.run_dir"]): r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {j.resolve() for j in jobs}
    for job in jobs:
        run = runs[job.resolve()]
        assert run.info.run_name == f"sweeps/{sweep.name}/{job.name}" and run.data.tags["sft.sweep"] == sweep.name
        assert run.data.params["seed"] == str(json.loads((job / "summary.json").read_text())["seed"])
        assert mlflow_series(client, run) == jsonl_series(job)
    seeds = [runs[j.resolve()].data.metrics["train/loss"] for j in jobs]
    assert seeds[0] != seeds[1]  # two jobs, two runs: not one run logged twice


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
@needs("mlflow")
def test_resume_continues_the_mlflow_run_without_duplicate_points(sft, tmp_path, offline, mlflow_store) -> None:
    # Killed as step 4 starts: steps 1-3 are logged, the checkpoint is step 2's, so the resumed attempt
    # logs step 3 again.
    offline = {**offline, "MLFLOW_TRACKING_URI": mlflow_store, "MLFLOW_EXPERIMENT_NAME": f"resume-{tmp_path.name}"}
    args = [*TINY, "trainer.report_to=mlflow", "run_name=r"]
    first = sft("train", *args, env={**offline, "SFT_TEST_KILL_AT_STEP": "4"})
    assert first.returncode != 0
    run_dir = tmp_path / "runs" / "r"
    client, state = mlflow_client(run_dir)
    assert client.get_run(state["run_id"]).info.status == "RUNNING"  # killed: nothing closed it
    second = sft("train", *args, "resume=auto", env=offline)
    assert second.returncode == 0, second.stderr
    assert "mlflow: continuing run" in second.stderr

    _, after = mlflow_client(run_dir)
    assert after["run_id"] == state["run_id"]
    (run,) = client.search_runs([state["experiment_id"]])
    assert run.info.run_id == state["run_id"] and run.info.status == "FINISHED"
    got, expected = mlflow_series(client, run), jsonl_series(run_dir)
    assert set(got) == set(expected)
    for key, points in got.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{key}: a step logged twice: {steps}"
        assert steps == [s for s, _ in expected[key]], key
        if not key.startswith("perf/"):  # exact resume: the re-run steps have the same values
            assert points == expected[key], key


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the run's offline .wandb log, read by W&B's own reader."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(log), "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@needs("wandb", "tensorboard")
def test_wandb_offline_run_and_the_tensorboard_synonym(sft, tmp_path, offline) -> None:
    proc = sft("train", *TINY, "trainer.report_to=wandb", "trainer.tensorboard=true", env=offline)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    expected = jsonl_series(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = wandb_records(run_dir)

    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["project"] == "sft" and run["run_id"] == json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    config = run["config"]["update"]
    assert config["trainer"]["max_steps"] == 4 and config["model"]["source"] == "tiny"
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r["type"] == "history":
            step = int(r["history"]["step"]["num"])
            for key, value in r["history"]["item"].items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((step, float(value)))
    assert series == expected
    final: dict[str, Any] = {}
    for r in records:
        if r["type"] == "summary":
            final.update(r["summary"]["update"])
    assert final["test/accuracy"] == pytest.approx(summary["test/accuracy"])
    assert final["val/accuracy"] == pytest.approx(summary["val/accuracy"])  # the best checkpoint's
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]

    # trainer.tensorboard=true: the same as adding tensorboard to report_to.
    board = tensorboard_series(run_dir)
    assert set(board) == set(expected)
    assert_close(board["train/loss"], expected["train/loss"])


def test_wandb_goes_online_only_with_credentials(tmp_path, monkeypatch) -> None:
    from sftcli.trackers import wandb as tracker

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracker.mode() == "offline"  # no netrc file
    netrc.write_text("machine example.org login user password secret\n")
    assert tracker.mode() == "offline"  # an entry for another host
    netrc.write_text("machine api.wandb.ai login user password secret\n")
    netrc.chmod(0o600)
    assert tracker.mode() == "online"  # what `wandb login` writes
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "key")
    assert tracker.mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracker.mode() is None  # the user's WANDB_MODE is left to W&B


@needs("mlflow")
def test_only_rank_0_reports(sft, tmp_path, offline, mlflow_store) -> None:
    name = f"ranks-{tmp_path.name}"  # MLFLOW_EXPERIMENT_NAME: every rank would log into this experiment
    proc = sft("train", *TINY, "trainer.nproc=2", "trainer.report_to=mlflow", timeout=300,
               env={**offline, "MLFLOW_TRACKING_URI": mlflow_store, "MLFLOW_EXPERIMENT_NAME": name})
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    client, state = mlflow_client(run_dir)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert [r.info.run_id for r in runs] == [state["run_id"]]
    assert mlflow_series(client, runs[0]) == jsonl_series(run_dir)


@pytest.mark.parametrize("args,module,key,pip", [
    (["trainer.report_to=mlflow"], "mlflow", "trainer.report_to", "mlflow"),
    (["trainer.report_to=[tensorboard,wandb]"], "wandb", "trainer.report_to", "wandb"),
    (["trainer.tensorboard=true"], "tensorboard", "trainer.tensorboard=true", "tensorboard"),
])
def test_a_missing_tracker_package_exits_2_before_training(tmp_path, args, module, key, pip) -> None:
    code = (f"import sys\nsys.modules[{module!r}] = None  # as if not installed\n"
            "from sftcli.cli import main\n"
            f"main(['train', *{TINY!r}, *{args!r}])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert f"{key}: " in proc.stderr and f"pip install 'sftcli[{pip}]'" in proc.stderr, proc.stderr
    assert f"pip install {pip})" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before training: no run dir left


def test_an_unknown_tracker_exits_2_naming_the_key(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "trainer.report_to=[mlflow,mlfow]")
    assert proc.returncode == 2
    assert ("trainer.report_to: unknown tracker 'mlfow' (did you mean 'mlflow'?); allowed: tensorboard, mlflow, "
            "wandb, none") in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value,names", [
    ([], []), ("none", []), (["none"], []), (None, []), ("mlflow", ["mlflow"]),
    (["wandb", "mlflow", "wandb"], ["wandb", "mlflow"]),
])
def test_report_to_names(value, names) -> None:
    assert TrainerConfig.model_validate({"report_to": value}).report_to == names


def test_none_with_a_tracker_is_refused() -> None:
    from sftcli.config import parse_train

    with pytest.raises(ConfigError, match=r"trainer.report_to: none means no tracker and cannot be combined"):
        parse_train({"trainer": {"report_to": ["none", "mlflow"]}})


@needs("tensorboard")
def test_tensorboard_tracker_hides_what_an_interrupted_attempt_logged_after_the_resume_step(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sftcli.trackers import RunFacts, Trackers
    from sftcli.trackers.tensorboard import TensorBoardTracker

    def started(resumed_step: int | None) -> Trackers:
        tracker = TensorBoardTracker()
        tracker.start({}, RunFacts(run_dir=tmp_path, run_root=tmp_path.parent, name="run", group=None,
                                   resumed_step=resumed_step, state={}))
        return Trackers([tracker])

    first = started(None)
    for step in (1, 2, 3):
        # Only numbers are plotted: paths, flags and None are not scalars.
        first.write(step, {"train/loss": 2.0 / step, "val/n": 530, "checkpoint/saved": "checkpoints/step-1",
                           "flag": True, "none": None, "nan": math.nan})
    first.finish({}, "failed")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "val/n", "nan"}
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert all(math.isnan(e.value) for e in events.Scalars("nan"))  # a diverging value stays visible

    # Resumed from step 1: the first attempt's steps 2 and 3 are superseded, not shown twice.
    second = started(1)
    second.write(2, {"train/loss": 0.9})
    second.write(3, {"train/loss": 0.8})
    second.finish({}, "completed")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 0.9), (3, 0.8)]
