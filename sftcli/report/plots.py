"""Plots (PNG, matplotlib imported only when plotting): learning curves per group, a lambda x tau heatmap
when both vary, label efficiency when labels_per_class varies.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftcli.report.groups import (
    LABEL_EFFICIENCY,
    LPC_KEY,
    STRATEGY_ORDER,
    EfficiencyPoint,
    Group,
    finite_number,
    group_label,
    label_efficiency,
    show_value,
    sort_value,
)
from sftcli.runlog import read_metrics

CURVE_KEYS = ("train/loss", "train/loss_sup", "train/loss_con", "val/accuracy")


def group_curves(group: Group, metric_keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Per key: steps and the mean over the group's runs at each step (the last value per step and run)."""
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
            out[key] = (xs, [statistics.fmean(steps[s]) for s in xs])
    return out


def make_plots(out_dir: Path, groups: Sequence[Group], keys: Sequence[str], metric: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and in CI

    written: dict[str, Path] = {}
    path = plot_learning_curves(out_dir / "learning_curves.png", groups, keys)
    if path:
        written["Learning curves"] = path
    path = plot_lambda_tau(out_dir / "lambda_tau_heatmap.png", groups, keys, metric)
    if path:
        written["lambda x tau"] = path
    path = plot_label_efficiency(out_dir / "label_efficiency.png", groups, keys, metric)
    if path:
        written[LABEL_EFFICIENCY] = path
    return written


def plot_learning_curves(path: Path, groups: Sequence[Group], keys: Sequence[str]) -> Path | None:
    import matplotlib.pyplot as plt

    curves = [(group_label(keys, g.key), group_curves(g, CURVE_KEYS)) for g in groups]
    panels = [k for k in CURVE_KEYS if any(k in c for _, c in curves)]
    if not panels:
        return None
    # One colour per group across all panels (the baseline has no loss_con line, so cycles would drift).
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    colors = [cmap(i % cmap.N) for i in range(len(curves))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for (label, curve), color in zip(curves, colors, strict=True):
            if key in curve:
                xs, ys = curve[key]
                ax.plot(xs, ys, color=color, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, label=label) for (label, _), c in zip(curves, colors, strict=True)]
    ncol = min(len(handles), 3)
    # Grow the figure by the legend's rows so dozens of groups never squash the panels.
    legend_in = 0.2 * math.ceil(len(handles) / ncol) + 0.3
    fig.set_size_inches(fig.get_figwidth(), 3.6 + legend_in)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_in / (3.6 + legend_in), 1, 1))
    fig.savefig(path, dpi=110)
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


def plot_label_efficiency(
    path: Path, groups: Sequence[Group], keys: Sequence[str], metric: str
) -> Path | None:
    points = label_efficiency(groups, keys, metric)
    xs_all = sorted({p.labels_per_class for p in points}, key=lambda v: sort_value(LPC_KEY, v))
    if len(xs_all) < 2:
        return None
    import matplotlib.pyplot as plt

    # Even spacing (4, 16, 64, all): "all" has no number and the values are usually geometric anyway.
    pos = {v: i for i, v in enumerate(xs_all)}
    lines: dict[str, list[EfficiencyPoint]] = defaultdict(list)
    for p in points:
        lines[p.line].append(p)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(lines.items(), key=lambda kv: STRATEGY_ORDER.get(kv[0], 99)):
        pts.sort(key=lambda p: pos[p.labels_per_class])
        ax.errorbar(
            [pos[p.labels_per_class] for p in pts],
            [p.mean for p in pts],
            yerr=[p.std or 0.0 for p in pts],
            marker="o",
            capsize=4,
            label=label,
        )
    ax.set_xticks(range(len(xs_all)), [show_value(LPC_KEY, v) for v in xs_all])
    ax.set_xlabel("labels per class")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
