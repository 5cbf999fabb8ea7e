"""Hydra's Optuna sweeper over `sft train`: the task returns the selection metric, Optuna maximizes it, and
sft's own sweep.csv agrees with Optuna's optimization_results.yaml. Needs the optuna extra (scripts/setup.sh)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import TINY

FAST = [*TINY, "trainer.save_every=0"]


def sweep_dir(root: Path) -> Path:
    (found,) = root.glob("sweeps/*/optimization_results.yaml")
    return found.parent


def read_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "sweep.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def overrides(row: dict[str, str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in row["overrides"].split())


def test_optuna_sweep_maximizes_the_selection_metric(sft, tmp_path) -> None:
    proc = sft("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=maximize",
               "hydra.sweeper.sampler.seed=0", "+strategy=mix", *FAST, "lambda=interval(0.05,1.0)",
               "tau=choice(0.05,0.1)", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    sweep = sweep_dir(tmp_path / "runs")
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna"

    rows = read_rows(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "completed" and r["select_metric"] == "val/accuracy" for r in rows)
    values = [float(r["select_value"]) for r in rows]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert result["best_value"] == max(values)

    best = result["best_params"]
    assert set(best) == {"lambda", "tau"}
    assert 0.05 <= best["lambda"] <= 1.0 and best["tau"] in (0.05, 0.1)
    for row in rows:  # every trial drew from the search space
        params = overrides(row)
        assert 0.05 <= float(params["lambda"]) <= 1.0 and float(params["tau"]) in (0.05, 0.1)
    # The best params are those of a job that reached the best value.
    best_rows = [overrides(r) for r, v in zip(rows, values, strict=True) if v == max(values)]
    assert any(math.isclose(float(p["lambda"]), best["lambda"]) and float(p["tau"]) == best["tau"]
               for p in best_rows)


def test_optuna_sweep_goes_on_after_a_failed_trial(sft, tmp_path) -> None:
    """A refused job is a failed Optuna trial (the task returns None, not NaN, which Optuna rejects and
    which used to end the whole sweep with a traceback); the sweep finishes and exits with the job's code.
    The random sampler with seed 0 draws tau=0.1, then tau=-1.0 (refused: tau must be > 0)."""
    proc = sft("train", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
               "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize", "+strategy=mix", *FAST,
               "trainer.max_steps=2", "trainer.eval_every=0", "lambda=0.5", "tau=choice(-1.0,0.1)", timeout=300)
    sweep = sweep_dir(tmp_path / "runs")
    rows = [(overrides(r)["tau"], r) for r in read_rows(sweep)]
    assert sorted(tau for tau, _ in rows) == ["-1.0", "0.1"], f"seed 0 no longer draws both options: {rows}"
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "tau: must be > 0" in proc.stderr
    for tau, row in rows:
        if tau == "-1.0":
            assert row["status"] == "failed" and row["select_value"] == "" and "tau" in row["error"]
        else:
            assert row["status"] == "completed"
            completed = float(row["select_value"])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"] == {"tau": 0.1}
    assert result["best_value"] == completed


def test_optuna_sweeper_without_the_plugin_says_how_to_install_it(tmp_path) -> None:
    code = ("import sys\nsys.modules['hydra_plugins.hydra_optuna_sweeper'] = None  # as if not installed\n"
            "from sftcli.cli import main\n"
            "main(['train', '-m', 'hydra/sweeper=optuna', '+strategy=mix', 'lambda=interval(0.05,1.0)'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'sftcli[optuna]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
