"""`sft report` on hand-made run dirs, sweep.csv from a real multirun with a failing job, TensorBoard events."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY

from sftcli.errors import ConfigError, UserError
from sftcli.report import run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    name: str,
    *,
    seed: int,
    strategy: str | None,
    lpc: int | None,
    test_acc: float,
    val_acc: float,
    lam: float | None = None,
    tau: float | None = None,
    status: str = "completed",
    error: str | None = None,
) -> Path:
    """A run dir as `sft train` writes it (config.yaml, .hydra/overrides.yaml, metrics.jsonl, summary.json)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config: dict[str, Any] = {
        "model": {"source": "tiny", "max_length": 64},
        "data": {"source": "trec6", "labels_per_class": lpc, "max_unlabeled": None},
        "loss": {"weight": lam, "tau": tau, "negatives": "finetuned"},
        "trainer": {"max_steps": 4, "batch_size": 8},
        "seed": seed,
        "lambda": lam,
        "tau": tau,
        "run_root": str(root),
        "run_name": name,
        "cache_dir": None,
    }
    overrides = [
        "model=tiny",
        f"seed={seed}",
        f"data.labels_per_class={'null' if lpc is None else lpc}",
        f"run_root={root}",
    ]
    if strategy:
        config["strategy"] = {"name": strategy}
        overrides += [f"+strategy={strategy}", f"lambda={lam}", f"tau={tau}"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status == "failed":
        (run / "summary.json").write_text(json.dumps({"status": "failed", "error": error, "exit_code": 3}))
        return run
    events = []
    for step in (2, 4):
        train = {
            "step": step,
            "train/loss": 2.0 - 0.1 * step - seed * 0.01,
            "train/loss_sup": 1.5 - 0.1 * step,
        }
        if strategy:
            train["train/loss_con"] = 0.5
        events += [
            train,
            {"step": step, "val/accuracy": val_acc * step / 4, "val/n": 530},
            {"step": step, "checkpoint/saved": f"checkpoints/step-{step:06d}"},
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    summary = {
        "status": "completed",
        "best_checkpoint": "checkpoints/step-000004",
        "select_metric": "val/accuracy",
        "select_value": val_acc,
        "val/accuracy": val_acc,
        "val/macro_f1": val_acc - 0.1,
        "test/accuracy": test_acc,
        "test/macro_f1": test_acc - 0.05,
        "test/per_class": {},
        "seed": seed,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A sweep-like tree: baseline and mix at 4 and 16 labels per class, a 2x2 lambda x tau grid at 4."""
    root = tmp_path / "runs"
    n = 0

    def add(**kw: Any) -> None:
        nonlocal n
        make_run(root / "sweeps" / "S", str(n), **kw)
        n += 1

    # The group checked by hand below: mix, 4 labels/class, lambda=0.5, tau=0.1, three seeds.
    for seed, acc in zip((0, 1, 2), (0.70, 0.74, 0.75), strict=True):
        add(seed=seed, strategy="mix", lpc=4, lam=0.5, tau=0.1, test_acc=acc, val_acc=0.60)
    # The best test accuracy but the worst validation: the label-efficiency plot must not pick it.
    for seed in (0, 1):
        add(seed=seed, strategy="mix", lpc=4, lam=0.1, tau=0.05, test_acc=0.90, val_acc=0.40)
    add(seed=0, strategy="mix", lpc=4, lam=0.1, tau=0.1, test_acc=0.65, val_acc=0.50)
    add(seed=0, strategy="mix", lpc=4, lam=0.5, tau=0.05, test_acc=0.66, val_acc=0.55)
    for seed, acc in zip((0, 1), (0.80, 0.84), strict=True):
        add(seed=seed, strategy="mix", lpc=16, lam=0.5, tau=0.1, test_acc=acc, val_acc=0.7)
    for seed, acc in zip((0, 1), (0.50, 0.60), strict=True):
        add(seed=seed, strategy=None, lpc=4, test_acc=acc, val_acc=0.5)
    add(seed=0, strategy=None, lpc=16, test_acc=0.77, val_acc=0.7)
    add(
        seed=1,
        strategy="mix",
        lpc=16,
        lam=0.5,
        tau=0.1,
        test_acc=0.0,
        val_acc=0.0,
        status="failed",
        error="non-finite loss at step 3",
    )
    return root


def table_row(out: str, *cells: str) -> str:
    """The one printed table line holding all these cells, in order."""
    hits = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.strip("│┃ ").split("│")]
        if len(parts) >= len(cells) and parts[: len(cells)] == list(cells):
            hits.append(line)
    assert len(hits) == 1, f"expected one row starting {cells}, got {hits}\n{out}"
    return hits[0]


def test_report_groups_runs_with_mean_std_and_writes_plots(runs: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "out"
    assert run_report([str(runs), f"out={out_dir}"]) == 0
    out = capsys.readouterr().out

    # Hand computation for (mix, 4, 0.5, 0.1): mean (0.70+0.74+0.75)/3 = 0.73;
    # sample std sqrt((0.03^2 + 0.01^2 + 0.02^2) / 2) = sqrt(0.0007) = 0.026458.
    row = table_row(out, "mix", "4", "0.5", "0.1", "3")
    assert "0.7300 ± 0.0265" in row  # test/accuracy
    assert "0.6800 ± 0.0265" in row  # test/macro_f1 = accuracy - 0.05: same std
    assert "0.6000 ± 0.0000" in row  # val/accuracy, identical values
    # Baseline at 4: mean 0.55, std sqrt(0.005) = 0.070711; the baseline has no lambda/tau.
    assert "0.5500 ± 0.0707" in table_row(out, "none", "4", "-", "-", "2")
    # n=1 has no std; the failed run is not counted in its group (n stays 2) but listed with its error.
    assert "0.7700 ± -" in table_row(out, "none", "16", "-", "-", "1")
    assert "0.8200 ± 0.0283" in table_row(out, "mix", "16", "0.5", "0.1", "2")
    assert "1 run(s) not completed" in out and "non-finite loss at step 3" in out
    assert "12 completed run(s) in 7 group(s)" in out

    with (out_dir / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7
    (hand,) = [
        r
        for r in rows
        if (r["strategy"], r["data.labels_per_class"], r["lambda"], r["tau"]) == ("mix", "4", "0.5", "0.1")
    ]
    assert hand["n"] == "3" and hand["seeds"] == "0 1 2"
    assert math.isclose(float(hand["test/accuracy mean"]), 0.73, abs_tol=1e-12)
    assert math.isclose(float(hand["test/accuracy std"]), math.sqrt(0.0007), rel_tol=1e-9)
    (single,) = [r for r in rows if (r["strategy"], r["data.labels_per_class"]) == ("none", "16")]
    assert single["test/accuracy std"] == ""

    with (out_dir / "runs.csv").open() as fh:
        per_run = list(csv.DictReader(fh))
    assert len(per_run) == 13 and [r["status"] for r in per_run].count("failed") == 1

    for name in ("validation.png", "learning_curves.png", "lambda_tau_heatmap.png", "label_efficiency.png"):
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    import matplotlib.image

    assert matplotlib.image.imread(out_dir / "label_efficiency.png").shape[2] in (3, 4)

    md = (out_dir / "report.md").read_text()
    assert "| mix | 4 | 0.5 | 0.1 | 3 | 0.7300 ± 0.0265 |" in md
    assert "![Label efficiency](label_efficiency.png)" in md
    # Label efficiency picks lambda/tau on validation (0.60 for lambda=0.5 tau=0.1), not on test (0.90).
    assert "| mix | 4 | 3 | 0.7300 ± 0.0265 | lambda=0.5 tau=0.1 |" in md
    # Its lines carry the plot's legend names: the baseline reads "supervised", not strategy "none".
    assert "| supervised | 16 | 1 | 0.7700 ± - | - |" in md


def test_report_group_by_and_metric_options(runs: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "by-strategy"
    assert (
        run_report(
            [
                str(runs / "sweeps" / "S" / "*"),
                "group_by=strategy",
                "metric=val/accuracy",
                f"out={out_dir}",
                "plots=false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # 9 completed mix runs pooled over lambda/tau/labels: val 0.6*3 + 0.4*2 + 0.5 + 0.55 + 0.7*2 = 5.05 -> 0.5611.
    row = table_row(out, "mix", "9")
    assert row.split("│")[3].strip().startswith("0.5611 ± ")
    assert "0.5667 ± 0.1155" in table_row(out, "none", "3")  # (0.5, 0.5, 0.7)
    assert not list(out_dir.glob("*.png"))  # plots=false
    # A unique suffix names a nested key.
    assert run_report([str(runs), "group_by=labels_per_class", f"out={out_dir}", "plots=false"]) == 0
    assert table_row(capsys.readouterr().out, "4", "9")  # 7 mix + 2 baseline runs at 4 labels per class


def test_report_rejects_bad_input(runs: Path, tmp_path: Path, sft) -> None:
    with pytest.raises(ConfigError, match="unknown option 'metrc'.*did you mean 'metric'"):
        run_report([str(runs), "metrc=test/accuracy"])
    with pytest.raises(ConfigError, match="group_by: 'lamda'.*did you mean lambda"):
        run_report([str(runs), "group_by=lamda"])
    with pytest.raises(ConfigError, match="metric: 'test/acc' is in no run"):
        run_report([str(runs), "metric=test/acc"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no runs found"):
        run_report([str(tmp_path / "empty")])
    # Through the CLI: one message, exit code 2, no traceback.
    proc = sft("report", str(tmp_path / "nowhere"))
    assert (
        proc.returncode == 2 and "no such file or directory" in proc.stderr and "Traceback" not in proc.stderr
    )


def _without(args: list[str], *keys: str) -> list[str]:
    return [a for a in args if not a.startswith(tuple(k + "=" for k in keys))]


def test_sweep_csv_has_a_row_for_every_job_even_a_failed_one(sft, tmp_path: Path) -> None:
    tiny = _without(TINY, "trainer.max_steps", "trainer.eval_every", "trainer.save_every")
    proc = sft(
        "train",
        "-m",
        *tiny,
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.save_every=2",
        "optim.lr=1e-4,-1,2e-4",
    )
    assert proc.returncode == 2, proc.stderr  # the failed job's user error, after the sweep went on
    (sweep,) = (tmp_path / "runs" / "sweeps").iterdir()
    with (sweep / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert "optim.lr=-1" in rows[1]["overrides"] and "optim.lr: must be > 0" in rows[1]["error"]
    assert rows[1]["select_value"] == "" and rows[1]["test/accuracy"] == ""
    for row in (rows[0], rows[2]):
        summary = json.loads((sweep / row["run_dir"] / "summary.json").read_text())
        assert row["select_metric"] == "val/accuracy" and row["error"] == ""
        assert float(row["select_value"]) == pytest.approx(summary["select_value"])
        assert float(row["test/accuracy"]) == pytest.approx(summary["test/accuracy"])
        assert float(row["test/macro_f1"]) == pytest.approx(summary["test/macro_f1"])

    # The same sweep through `sft report`: the two learning rates are the groups; the failed job is listed.
    rep = sft("report", str(sweep), "plots=false")
    assert rep.returncode == 0, rep.stderr
    assert "2 completed run(s) in 2 group(s)" in rep.stdout and "optim.lr: must be > 0" in rep.stdout
    assert (sweep / "report.csv").is_file()


def test_what_a_tracker_keeps_inside_a_run_is_not_a_run(tmp_path: Path) -> None:
    from sftcli.report import find_runs

    run = make_run(tmp_path, "r", seed=0, strategy=None, lpc=16, test_acc=0.5, val_acc=0.5)
    # W&B online writes its own config.yaml under the run dir (trainer.report_to=wandb).
    files = run / "wandb" / "run-20250101_000000-abc" / "files"
    files.mkdir(parents=True)
    (files / "config.yaml").write_text("seed: {value: 0}\n")
    assert [r.path for r in find_runs([str(tmp_path)])] == [run]


def test_a_pattern_takes_the_runs_it_names_not_the_files_beside_them(tmp_path: Path) -> None:
    from sftcli.report import find_runs

    a = make_run(tmp_path, "setfit-k16-seed0", seed=0, strategy=None, lpc=16, test_acc=0.5, val_acc=0.5)
    make_run(tmp_path, "best-k16-seed0", seed=0, strategy=None, lpc=16, test_acc=0.6, val_acc=0.6)
    # experiments/compare_setfit.py keeps each run's console log beside its run dir.
    (tmp_path / "setfit-k16-seed0.log").write_text("log\n")
    assert [r.path for r in find_runs([str(tmp_path / "setfit-*")])] == [a]
    # A run's own config.yaml or summary.json still names its run.
    assert [r.path for r in find_runs([str(a / "summary.json")])] == [a]


def test_a_key_only_some_runs_have_sets_them_apart(tmp_path: Path) -> None:
    # experiments/anchor_setfit.py's runs carry `anchor: setfit`; sft's own runs have no such key. Same K,
    # same seeds: still two groups, not one mean over both.
    from sftcli.report import find_runs
    from sftcli.report.groups import group_runs, varying_keys

    for seed in (0, 1):
        make_run(tmp_path, f"sft-{seed}", seed=seed, strategy=None, lpc=16, test_acc=0.7, val_acc=0.7)
        anchor = make_run(tmp_path, f"setfit-{seed}", seed=seed, strategy=None, lpc=16, test_acc=0.9, val_acc=0.9)
        config = yaml.safe_load((anchor / "config.yaml").read_text())
        (anchor / "config.yaml").write_text(yaml.safe_dump({**config, "anchor": "setfit"}))
    runs = find_runs([str(tmp_path)])
    keys = varying_keys(runs)
    assert "anchor" in keys
    groups = group_runs(runs, keys)
    assert sorted(len(g.runs) for g in groups) == [2, 2]
    assert sorted(g.values("test/accuracy")[0] for g in groups) == [0.7, 0.9]
