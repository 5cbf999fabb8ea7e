"""Cluster sweeps through Hydra's submitit launcher, on one machine (hydra/launcher=submitit_local runs
the path that submitit_slurm runs on SLURM): each job a complete sft run, a SIGTERM to a job, and
submitit's own preemption signal with its requeue. Needs the submitit extra (scripts/setup.sh)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli_env, read_jsonl, wait_for
from test_reliability import assert_same_weights, weights

from sftcli import checkpoint as ckpt

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the submitit extra is not installed")

LOCAL = ["-m", "hydra/launcher=submitit_local"]
# One job's settings: a mix run with both streams, checkpoints every 2 steps.
JOB = [*TINY, "+strategy=mix", "lambda=0.5", "trainer.max_steps=8", "trainer.save_every=2", "trainer.eval_every=4"]


def rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "sweep.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def only_sweep(root: Path) -> Path:
    (sweep,) = (root / "runs" / "sweeps").iterdir()
    return sweep


def job_task(sweep: Path) -> int:
    """The pid of the (only) job's task: submitit_local names the job folder after its controller
    process, which starts the task (`python -m submitit.core._submit`) as its child."""
    (folder,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    controller = int(folder.name)
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    return int(task)


def start_sweep(cwd: Path, cache_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftcli", "train", *LOCAL, *args], cwd=cwd,
                            env=cli_env(cache_dir, {"SFT_TEST_STEP_DELAY": "0.3"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Path:
    """The job's run, uninterrupted and in-process."""
    root = tmp_path_factory.mktemp("reference")
    subprocess.run([sys.executable, "-m", "sftcli", "train", *JOB, "run_name=ref"], cwd=root, env=cli_env(cache_dir),
                   check=True, capture_output=True, timeout=300)
    return root / "runs" / "ref"


def test_a_submitit_sweep_runs_each_job_as_a_complete_run(sft, tmp_path) -> None:
    proc = sft("train", *LOCAL, *TINY, "+strategy=mix", "lambda=0.5", "trainer.nproc=1,2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    sweep = only_sweep(tmp_path)
    table = rows(sweep)
    assert [r["job"] for r in table] == ["0", "1"]
    assert all(r["status"] == "completed" and r["select_metric"] == "val/accuracy" for r in table)
    for row in table:
        run = sweep / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["world_size"] == (2 if "trainer.nproc=2" in row["overrides"] else 1)
        assert (run / "config.yaml").is_file() and ckpt.verify(run / summary["last_checkpoint"])
        assert [e["step"] for e in read_jsonl(run / "metrics.jsonl") if "train/loss" in e] == [1, 2, 3, 4]
        assert float(row["select_value"]) == summary["select_value"]
    # Each job returned its selection metric to Hydra: submitit's result file holds the job's JobReturn.
    returned = {}
    for result in sweep.glob(".submitit/*/*_result.pkl"):
        outcome, job_return = pickle.loads(result.read_bytes())
        assert outcome == "success"
        returned[int(job_return.hydra_cfg.hydra.job.num)] = job_return.return_value
    assert returned == {int(r["job"]): float(r["select_value"]) for r in table}


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_sigterm_to_a_submitit_job_exits_75_then_resume_is_exact(tmp_path, cache_dir, reference) -> None:
    proc = start_sweep(tmp_path, cache_dir, *JOB)
    wait_for(lambda: (tmp_path / "runs" / "sweeps").is_dir() and
             any(only_sweep(tmp_path).glob("0/checkpoints/step-000002")), 120, "the job's first checkpoint", proc)
    sweep = only_sweep(tmp_path)
    os.kill(job_task(sweep), signal.SIGTERM)  # as SLURM signals a job's task (scancel, preemption)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 75, stderr[-3000:]
    assert "Traceback" not in stderr
    failed = [line for line in stderr.splitlines() if "job(s) of the sweep failed" in line]
    assert len(failed) == 1 and "stopped by a signal at step" in failed[0]
    run = sweep / "0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["exit_code"] == 75  # what the job exited with
    assert not list(sweep.glob(".submitit/*/*_result.pkl"))  # no result: submitit sees an unfinished job
    assert rows(sweep)[0]["status"] == "preempted"
    stopped = ckpt.newest_valid(run / "checkpoints")
    assert stopped is not None and ckpt.verify(stopped) and stopped.name > "step-000002"
    # Continue the sweep where it was: the same sweep dir, resume=auto.
    again = subprocess.run([sys.executable, "-m", "sftcli", "train", *LOCAL, *JOB, f"hydra.sweep.dir={sweep}",
                            "resume=auto"], cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stopped}" in (run / "train.log").read_text()
    assert_same_weights(weights(run, 8), weights(reference, 8))
    assert rows(sweep)[0]["status"] == "completed"


def test_submitits_preemption_signal_saves_requeues_and_continues_exactly(tmp_path, cache_dir, reference) -> None:
    # submitit's signal before a time limit or a preemption (SIGUSR2): the run saves, submitit requeues
    # the job, and the requeued job continues from that checkpoint; the sweep finishes as if uninterrupted.
    proc = start_sweep(tmp_path, cache_dir, *JOB)
    wait_for(lambda: (tmp_path / "runs" / "sweeps").is_dir() and
             any(only_sweep(tmp_path).glob("0/checkpoints/step-000002")), 120, "the job's first checkpoint", proc)
    sweep = only_sweep(tmp_path)
    os.kill(job_task(sweep), signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    run = sweep / "0"
    log = (run / "train.log").read_text()
    assert "received SIGUSR2: finishing step" in log and "resumed from" in log
    assert any("Requeued job" in p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert_same_weights(weights(run, 8), weights(reference, 8))
    steps = [e["step"] for e in read_jsonl(run / "metrics.jsonl") if "train/loss" in e]
    assert steps == list(range(1, 9))
    assert rows(sweep)[0]["status"] == "completed"


def test_the_submitit_launcher_without_the_plugin_says_how_to_install_it(tmp_path) -> None:
    code = ("import sys\nsys.modules['hydra_plugins.hydra_submitit_launcher'] = None  # as if not installed\n"
            "from sftcli.cli import main\n"
            "main(['train', '-m', 'hydra/launcher=submitit_slurm', 'lambda=0.1,0.5', '+strategy=mix'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'sftcli[submitit]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
