"""`sft report`'s plots: the validation curve and the label-efficiency curve, their short legend labels,
and a report redrawn from an earlier report's runs.csv."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY
from test_report import PNG_MAGIC, make_run

from sftcli.errors import UserError
from sftcli.report import run_report
from sftcli.report.collect import Run
from sftcli.report.labels import MAX_LABEL, config_settings, legend_for, short_labels


def _settings(*overrides: str) -> dict[str, str]:
    return dict(o.lstrip("+").split("=", 1) for o in overrides)


def test_short_labels_name_lines_by_what_sets_them_apart() -> None:
    legend = short_labels(
        [
            _settings("model=tiny", "data.labels_per_class=4"),
            _settings("model=tiny", "data.labels_per_class=null"),
            _settings("model=tiny", "+strategy=mix", "lambda=0.1", "data.labels_per_class=4"),
            _settings("model=tiny", "+strategy=mix", "lambda=0.1", "data.labels_per_class=16"),
        ]
    )
    # Group choices by value, labels_per_class as K (null = all), the baseline named; lambda, the same on
    # every line that sets it, and model=tiny, on every line, are said once (in the title), not per line.
    assert legend.labels == ["supervised, K=4", "supervised, K=all", "mix, K=4", "mix, K=16"]
    assert legend.shared == ["model=tiny"] and legend.where_set == ["lambda=0.1"]
    assert legend.subtitle() == "where set: lambda=0.1; K = labels per class; all runs: model=tiny"

    # A value that differs stays in the label; keys show their last component unless two keys share it.
    legend = short_labels(
        [
            _settings("+recipe=self_training", "optim.lr=1e-4", "model.pooling=cls", "loss.pooling=mean"),
            _settings("+recipe=self_training", "optim.lr=3e-4", "model.pooling=mean", "loss.pooling=mean"),
        ]
    )
    assert legend.labels == [
        "lr=1e-4, model.pooling=cls",
        "lr=3e-4, model.pooling=mean",
    ]
    assert legend.shared == ["self_training", "loss.pooling=mean"]

    # A key is moved to the title only while the labels stay distinct.
    legend = short_labels([_settings("+strategy=mix", "lambda=0.5"), _settings("+strategy=mix"), {}])
    assert legend.labels == ["mix, lambda=0.5", "mix", "supervised"]

    # An anchor of experiments/anchor_setfit.py is named like a recipe, beside sft's own lines.
    legend = short_labels([_settings("anchor=setfit"), _settings("+recipe=best"), {}])
    assert legend.labels == ["setfit", "best", "supervised"]

    # A line with none of the others' settings runs on the defaults they change.
    assert short_labels([_settings("optim.lr=1e-3"), {}]).labels == ["lr=1e-3", "defaults"]

    long = short_labels([_settings(*(f"trainer.knob_{i}={c * 12}" for i in range(8))) for c in "xy"])
    assert all(len(label) <= MAX_LABEL and label.endswith("…") for label in long.labels)
    assert long.labels[0].startswith("knob_0=xxxxxxxxxxxx, knob_1=")


def test_lines_named_from_overrides_a_plain_run_included(tmp_path: Path) -> None:
    def run(name: str, overrides: list[str], hydra_record: bool = True, **config: Any) -> Run:
        path = tmp_path / name
        (path / ".hydra").mkdir(parents=True)
        if hydra_record:
            (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        return Run(path, "completed", config, overrides, {})

    plain = run("plain", [], strategy="none")  # `sft train`: Hydra records an empty override list
    recipe = run("recipe", ["+recipe=self_training"], strategy="mix", **{"model.head_pooling": "mean"})
    keys = ["strategy", "model.head_pooling"]
    fallback = [config_settings(keys, ["none", "pooler"]), config_settings(keys, ["mix", "mean"])]
    # The recipe reads as the recipe the user typed, not as the config keys it changed.
    assert legend_for([[plain], [recipe]], fallback).labels == ["supervised", "self_training"]
    # Without a record of a run's overrides, the lines are named by their differing config values.
    unknown = run("unknown", [], hydra_record=False, strategy="none")
    assert legend_for([[unknown], [recipe]], fallback).labels == [
        "supervised, head_pooling=pooler",
        "mix, head_pooling=mean",
    ]


def _capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What each saved figure shows: legend texts, titles, axis labels and scales, limits, ticks, bands."""
    import matplotlib.collections
    import matplotlib.figure

    seen: dict[str, dict[str, Any]] = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        ax = self.axes[0]
        legends = [*self.legends, *(a.get_legend() for a in self.axes if a.get_legend())]
        renderer = self.canvas.get_renderer()
        right = ax.get_window_extent(renderer).x1
        seen[Path(fname).name] = {
            "legend": [t.get_text() for leg in legends for t in leg.get_texts()],
            "suptitle": self._suptitle.get_text() if self._suptitle else "",
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(),
            "ylim": ax.get_ylim(),
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "legend_right_of_axes": bool(legends) and all(
                leg.get_window_extent(renderer).x0 >= right for leg in legends
            ),
            "bands": sum(isinstance(c, matplotlib.collections.PolyCollection) for c in ax.collections),
        }
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


def _png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_MAGIC), path
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


@pytest.fixture
def seeded_runs(tmp_path: Path) -> Path:
    """Baseline and mix at 4 and 16 labels per class, three seeds each: groups with a spread to draw."""
    root = tmp_path / "runs"
    n = 0
    for strategy, lam, tau in ((None, None, None), ("mix", 0.1, 0.05)):
        for lpc in (4, 16):
            for seed in (0, 1, 2):
                acc = 0.4 + 0.02 * lpc + 0.01 * seed + (0.05 if strategy else 0.0)
                make_run(root, str(n), seed=seed, strategy=strategy, lpc=lpc, lam=lam, tau=tau,
                         test_acc=acc, val_acc=acc)
                n += 1
    return root


def test_validation_and_label_efficiency_plots(seeded_runs: Path, tmp_path: Path, monkeypatch) -> None:
    figures = _capture_figures(monkeypatch)
    out = tmp_path / "out"
    assert run_report([str(seeded_runs), f"out={out}"]) == 0

    val = figures["validation.png"]
    # The report ranks test/accuracy, which has no value per step: the curve is the runs' select_metric.
    assert val["suptitle"] == "val/accuracy during training"
    assert val["legend"] == ["supervised, K=4", "supervised, K=16", "mix, K=4", "mix, K=16"]
    assert "where set: lambda=0.1, tau=0.05" in val["title"] and "all runs: model=tiny" in val["title"]
    assert val["xlabel"].startswith("step") and val["ylabel"] == "val/accuracy (mean ± std over seeds)"
    assert val["bands"] == 4  # every group has three seeds: one ± std band each
    assert val["legend_right_of_axes"] is False  # four lines: inside the axes
    low, high = val["ylim"]
    # Around the data (val/accuracy runs 0.24 to 0.77 over the steps), never past [0, 1].
    assert 0.0 <= low < 0.24 and 0.77 < high <= 1.0 and high - low < 0.8

    eff = figures["label_efficiency.png"]
    assert eff["legend"] == ["supervised", "mix"]
    assert eff["xscale"] == "log" and eff["xticklabels"] == ["4", "16"]
    assert eff["ylabel"] == "test/accuracy (mean ± std over seeds)"
    assert eff["suptitle"] == "test/accuracy by labels per class"

    for name in ("validation.png", "label_efficiency.png", "learning_curves.png"):
        width, height = _png_size(out / name)
        assert 500 <= width <= 2500 and 300 <= height <= 1200, (name, width, height)
    md = (out / "report.md").read_text()
    assert "![Validation](validation.png)" in md and "| mix | 16 | 3 |" in md


def test_many_lines_put_the_legend_beside_the_axes(tmp_path: Path, monkeypatch) -> None:
    figures = _capture_figures(monkeypatch)
    root = tmp_path / "runs"
    for i, lam in enumerate((0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0)):
        make_run(root, str(i), seed=0, strategy="mix", lpc=16, lam=lam, tau=0.05, test_acc=0.5, val_acc=0.5)
    assert run_report([str(root), f"out={tmp_path / 'out'}"]) == 0
    val = figures["validation.png"]
    assert val["legend"][:2] == ["lambda=0.05", "lambda=0.1"] and len(val["legend"]) == 8
    assert val["bands"] == 0  # one run per line: no spread to show
    assert val["legend_right_of_axes"] is True  # eight lines: the legend would cover the curves inside


def test_report_of_a_real_sweep_over_labels_per_class(sft, tmp_path: Path, monkeypatch) -> None:
    proc = sft("train", "-m", *TINY, "trainer.max_steps=2", "data.labels_per_class=4,null", "seed=3")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "runs" / "sweeps").iterdir()
    rep = sft("report", str(sweep))
    assert rep.returncode == 0, rep.stderr
    for name in ("validation.png", "label_efficiency.png", "learning_curves.png"):
        width, height = _png_size(sweep / name)
        assert 500 <= width <= 2500 and 300 <= height <= 1200, (name, width, height)

    figures = _capture_figures(monkeypatch)
    assert run_report([str(sweep), f"out={tmp_path / 'again'}"]) == 0
    val = figures["validation.png"]
    assert val["legend"] == ["K=4", "K=all"]  # not "data.labels_per_class=4 seed=3 model=tiny ..."
    assert "all runs: model=tiny" in val["title"] and "seed" not in val["title"]
    assert figures["label_efficiency.png"]["xticklabels"] == ["4", "all"]


def test_report_redrawn_from_runs_csv(seeded_runs: Path, tmp_path: Path, sft) -> None:
    first = tmp_path / "first"
    assert run_report([str(seeded_runs), f"out={first}"]) == 0
    shutil.rmtree(seeded_runs)  # only the report's files are left
    again = tmp_path / "again"
    assert run_report([str(first / "runs.csv"), f"out={again}"]) == 0
    # The same groups and statistics, from the csv alone; the curves need the run dirs, so they are not drawn.
    assert (again / "report.csv").read_text() == (first / "report.csv").read_text()
    assert (again / "runs.csv").read_text() == (first / "runs.csv").read_text()
    assert _png_size(again / "label_efficiency.png")
    assert not (again / "validation.png").exists() and not (again / "learning_curves.png").exists()

    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a runs.csv written by sft report"):
        run_report([str(bad)])
    proc = sft("report", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "other.csv: not a runs.csv" in proc.stderr and "Traceback" not in proc.stderr
