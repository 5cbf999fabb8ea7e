"""Plots (PNG, matplotlib imported only when plotting): the validation metric against step, label
efficiency when labels_per_class varies, the training losses, and a lambda x tau heatmap when both vary.
Lines are named by sftcli.report.labels; what every line shares goes into the title.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftcli.report.collect import Run
from sftcli.report.groups import (
    LABEL_EFFICIENCY,
    LPC_KEY,
    Group,
    finite_number,
    label_efficiency,
    show_value,
    sort_value,
)
from sftcli.report.labels import Legend, config_settings, efficiency_lines, legend_for
from sftcli.runlog import read_metrics

LOSS_KEYS = ("train/loss", "train/loss_sup", "train/loss_con")
VALIDATION = "Validation"
# Metrics that live in [0, 1]: their axis never runs past either end.
BOUNDED = ("accuracy", "f1", "precision", "recall")
# Up to this many lines the legend sits inside the axes; more go beside them.
LEGEND_INSIDE_MAX = 6
DPI = 110


@dataclass
class Curve:
    """One line: the mean over a group's runs at each step, and the sample std where two or more ran."""

    steps: list[int]
    mean: list[float]
    std: list[float | None]

    @property
    def has_band(self) -> bool:
        return any(s is not None for s in self.std)


def group_curves(group: Group, metric_keys: Sequence[str]) -> dict[str, Curve]:
    """Per key: the group's curve (the last value per step and run; a resumed run logs a step again)."""
    per_key: dict[str, dict[int, list[float]]] = {k: defaultdict(list) for k in metric_keys}
    for run in group.runs:
        last: dict[str, dict[int, float]] = {k: {} for k in metric_keys}
        for record in read_metrics(run.path / "metrics.jsonl"):
            step = record.get("step")
            if not isinstance(step, int):
                continue
            for key in metric_keys:
                value = finite_number(record.get(key))
                if value is not None:
                    last[key][step] = value
        for key in metric_keys:
            for step, value in last[key].items():
                per_key[key][step].append(value)
    out = {}
    for key, steps in per_key.items():
        if steps:
            xs = sorted(steps)
            out[key] = Curve(
                xs,
                [statistics.fmean(steps[s]) for s in xs],
                [statistics.stdev(steps[s]) if len(steps[s]) > 1 else None for s in xs],
            )
    return out


def curve_metric(metric: str, runs: Sequence[Run]) -> str:
    """The validation metric to draw against step: the report's metric when it is one (val/...), else
    the metric the runs selected their best checkpoint by (trainer.select_metric)."""
    if metric.startswith("val/"):
        return metric
    chosen = Counter(
        str(r.summary.get("select_metric") or r.config.get("trainer.select_metric") or "val/accuracy")
        for r in runs
    )
    return chosen.most_common(1)[0][0] if chosen else "val/accuracy"


def value_limits(values: Sequence[float], bounded: bool) -> tuple[float, float]:
    """Y limits around the data with a margin, never past [0, 1] for a bounded metric: differences of a
    point stay visible instead of being squashed into a 0-1 axis."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.01 if bounded else max(abs(hi), 1e-3) * 0.05)
    lo, hi = lo - pad, hi + pad
    return (max(0.0, lo), min(1.0, hi)) if bounded else (lo, hi)


def is_bounded(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].endswith(BOUNDED)


def _styles(n: int) -> list[tuple[Any, str]]:
    """A colour and line style per line: tab10 / tab20 colours, then dashed and dotted repeats of tab20."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    dashes = ("-", "--", ":", "-.")
    return [(cmap(i % cmap.N), dashes[(i // cmap.N) % len(dashes)]) for i in range(n)]


def _legend(ax: Any, n: int) -> None:
    """Inside the axes for a few lines; beside them (in columns of at most 20) for more."""
    if n <= 1:
        return
    if n <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    else:
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  ncol=math.ceil(n / 20), frameon=False)


def _titles(fig: Any, ax: Any, title: str, legend: Legend) -> None:
    fig.suptitle(title, fontsize=11)
    subtitle = legend.subtitle()
    if subtitle:
        ax.set_title(subtitle, fontsize=7.5, color="0.3")


def _finish(fig: Any, ax: Any, path: Path, title: str, legend: Legend, n_lines: int) -> Path:
    """Grid, legend and titles of a line plot, then the PNG at `path`."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    _legend(ax, n_lines)
    _titles(fig, ax, title, legend)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _step_ticks() -> Any:
    """Whole, round step numbers (10, 20, 50, ...), never 12, 18, 24."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10])


def _group_legend(groups: Sequence[Group], keys: Sequence[str]) -> Legend:
    return legend_for([g.runs for g in groups], [config_settings(keys, g.key) for g in groups])


def make_plots(out_dir: Path, groups: Sequence[Group], keys: Sequence[str], metric: str) -> dict[str, Path]:
    """Every plot these runs allow, by title; the validation curve first (the one a user reads first)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and in CI

    written: dict[str, Path] = {}
    val_metric = curve_metric(metric, [r for g in groups for r in g.runs])
    path = plot_validation(out_dir / "validation.png", groups, keys, val_metric)
    if path:
        written[VALIDATION] = path
    path = plot_label_efficiency(out_dir / "label_efficiency.png", groups, keys, metric)
    if path:
        written[LABEL_EFFICIENCY] = path
    path = plot_learning_curves(out_dir / "learning_curves.png", groups, keys)
    if path:
        written["Training losses"] = path
    path = plot_lambda_tau(out_dir / "lambda_tau_heatmap.png", groups, keys, metric)
    if path:
        written["lambda x tau"] = path
    return written


def _draw(ax: Any, curve: Curve, color: Any, dash: str, label: str, n_lines: int) -> list[float]:
    """The mean line, and a band of ± one std where the group has several runs; returns the y extent.
    Bands fade as lines multiply, so a dozen overlapping bands still leave every line readable."""
    marker = "o" if len(curve.steps) <= 30 else None
    ax.plot(curve.steps, curve.mean, color=color, linestyle=dash, marker=marker, markersize=3, label=label)
    ys = list(curve.mean)
    if curve.has_band:
        lo = [m - (s or 0.0) for m, s in zip(curve.mean, curve.std, strict=True)]
        hi = [m + (s or 0.0) for m, s in zip(curve.mean, curve.std, strict=True)]
        alpha = 0.18 if n_lines <= 3 else 0.12 if n_lines <= 6 else 0.07
        ax.fill_between(curve.steps, lo, hi, color=color, alpha=alpha, linewidth=0)
        ys += lo + hi
    return ys


def plot_validation(path: Path, groups: Sequence[Group], keys: Sequence[str], metric: str) -> Path | None:
    """`metric` against step, one line per group: the mean over its runs (seeds), with a ± std band."""
    import matplotlib.pyplot as plt
    legend = _group_legend(groups, keys)
    curves = [group_curves(g, [metric]).get(metric) for g in groups]
    lines = [(label, c) for label, c in zip(legend.labels, curves, strict=True) if c is not None]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    ys: list[float] = []
    for (label, curve), (color, dash) in zip(lines, _styles(len(lines)), strict=True):
        ys += _draw(ax, curve, color, dash, label, len(lines))
    ax.set_ylim(*value_limits(ys, is_bounded(metric)))
    ax.xaxis.set_major_locator(_step_ticks())
    ax.set_xlabel("step (optimizer steps)")
    banded = any(c.has_band for _, c in lines)
    ax.set_ylabel(metric + (" (mean ± std over seeds)" if banded else ""))
    return _finish(fig, ax, path, f"{metric} during training", legend, len(lines))


def plot_learning_curves(path: Path, groups: Sequence[Group], keys: Sequence[str]) -> Path | None:
    """The training losses, one panel each, one line per group, one legend below the panels."""
    import matplotlib.pyplot as plt

    legend = _group_legend(groups, keys)
    curves = [group_curves(g, LOSS_KEYS) for g in groups]
    panels = [k for k in LOSS_KEYS if any(k in c for c in curves)]
    if not panels:
        return None
    # One colour per group across all panels (the baseline has no loss_con line, so cycles would drift).
    styles = _styles(len(curves))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for label, curve, (color, dash) in zip(legend.labels, curves, styles, strict=True):
            if key in curve:
                _draw(ax, curve[key], color, dash, label, len(curves))
        ax.set_title(key, fontsize=10)
        ax.xaxis.set_major_locator(_step_ticks())
        ax.set_xlabel("step (optimizer steps)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (mean over seeds)")
    handles = [plt.Line2D([], [], color=c, linestyle=d, label=label)
               for label, (c, d) in zip(legend.labels, styles, strict=True)]
    ncol = min(len(handles), 4)
    title = "Training losses"
    subtitle = legend.subtitle(160)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    if len(handles) > 1:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8,
                   frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lambda_tau(path: Path, groups: Sequence[Group], keys: Sequence[str], metric: str) -> Path | None:
    """One heatmap of the metric's mean per value of the other varying keys (e.g. per strategy), only when
    both lambda and tau take two or more values among runs with a strategy."""
    if "lambda" not in keys or "tau" not in keys:
        return None
    li, ti = keys.index("lambda"), keys.index("tau")
    others = [i for i in range(len(keys)) if i not in (li, ti)]
    cells: dict[tuple[Any, ...], dict[tuple[Any, Any], list[float]]] = defaultdict(lambda: defaultdict(list))
    for group in groups:
        lam, tau = group.key[li], group.key[ti]
        if lam is None or tau is None:  # the supervised baseline has neither
            continue
        cells[tuple(group.key[i] for i in others)][(lam, tau)] += group.values(metric)
    lambdas = sorted({lt[0] for c in cells.values() for lt in c})
    taus = sorted({lt[1] for c in cells.values() for lt in c})
    if len(lambdas) < 2 or len(taus) < 2:
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    panels = sorted(cells, key=lambda k: [sort_value(keys[i], v) for i, v in zip(others, k, strict=True)])[
        :12
    ]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        squeeze=False,
        layout="constrained",
        figsize=(1.0 + ncols * (1.2 + 0.9 * len(taus)), 0.6 + nrows * (1.0 + 0.6 * len(lambdas))),
    )
    values = [v for c in cells.values() for vs in c.values() for v in vs]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    image = None
    for n_ax, (ax, panel) in enumerate(zip(axes.flat, panels, strict=False)):
        grid = np.full((len(lambdas), len(taus)), np.nan)
        for (lam, tau), vs in cells[panel].items():
            if vs:
                grid[lambdas.index(lam), taus.index(tau)] = statistics.fmean(vs)
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(lambdas)):
            for j in range(len(taus)):
                if not np.isnan(grid[i, j]):
                    n = len(cells[panel][(lambdas[i], taus[j])])
                    # Dark text on the bright end of viridis, white on the dark end.
                    bright = vmax > vmin and (grid[i, j] - vmin) / (vmax - vmin) > 0.6
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.3f}\nn={n}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if bright else "white",
                    )
        ax.set_xticks(range(len(taus)), [str(t) for t in taus])
        ax.set_yticks(range(len(lambdas)), [str(lam) for lam in lambdas])
        ax.set_xlabel("tau")
        if n_ax % ncols == 0:
            ax.set_ylabel("lambda")
        title = " ".join(
            f"{keys[i].rsplit('.', 1)[-1]}={show_value(keys[i], v)}"
            for i, v in zip(others, panel, strict=True)
        )
        ax.set_title(title or metric, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), label=f"{metric} (mean)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def efficiency_positions(values: Sequence[Any]) -> dict[Any, float]:
    """x positions on a log axis: each K at itself; "all" (None) one step past the largest K, at the
    ratio of the two largest (x4 when there is one), since it has no number of its own."""
    numeric = sorted(v for v in values if v is not None)
    pos: dict[Any, float] = {v: float(v) for v in numeric}
    if any(v is None for v in values):
        if not numeric:
            pos[None] = 1.0
        else:
            step = numeric[-1] / numeric[-2] if len(numeric) > 1 else 4.0
            pos[None] = numeric[-1] * max(step, 2.0)
    return pos


def plot_label_efficiency(
    path: Path, groups: Sequence[Group], keys: Sequence[str], metric: str
) -> Path | None:
    """The metric against labels per class on a log axis ticked at the Ks run, one line per strategy (or
    recipe), error bars = sample std over seeds; lambda/tau per point chosen on validation."""
    points = label_efficiency(groups, keys, metric)
    xs_all = sorted({p.labels_per_class for p in points}, key=lambda v: sort_value(LPC_KEY, v))
    if len(xs_all) < 2:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    pos = efficiency_positions(xs_all)
    lines, legend = efficiency_lines(points)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    ys: list[float] = []
    for i, ((label, pts), (color, dash)) in enumerate(zip(lines, _styles(len(lines)), strict=True)):
        # Lines side by side at each K (a few percent on the log axis) so error bars do not hide each other.
        dodge = 1.0 + 0.06 * (i - (len(lines) - 1) / 2)
        xs = [pos[p.labels_per_class] * dodge for p in pts]
        means = [p.mean for p in pts]
        errs = [p.std or 0.0 for p in pts]
        numbered = [j for j, p in enumerate(pts) if p.labels_per_class is not None]
        ax.errorbar([xs[j] for j in numbered], [means[j] for j in numbered],
                    yerr=[errs[j] for j in numbered], color=color, linestyle=dash, marker="o", capsize=4,
                    label=label)
        if len(numbered) < len(pts):  # "all": not on the K scale, so joined by a dotted line
            j = len(pts) - 1
            ax.errorbar([xs[j]], [means[j]], yerr=[errs[j]], color=color, marker="s", capsize=4,
                        linestyle="none", label=None if numbered else label)
            if numbered:
                last = numbered[-1]
                ax.plot([xs[last], xs[j]], [means[last], means[j]], color=color, linestyle=":")
        ys += [m + sign * e for m, e in zip(means, errs, strict=True) for sign in (-1, 1)]
    ax.set_xscale("log")
    ax.set_xticks([pos[v] for v in xs_all], [show_value(LPC_KEY, v) for v in xs_all])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(pos.values()) / 1.5, max(pos.values()) * 1.5)
    ax.set_ylim(*value_limits(ys, is_bounded(metric)))
    ax.set_xlabel("labels per class (K, log scale)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    return _finish(fig, ax, path, f"{metric} by labels per class", legend, len(lines))
