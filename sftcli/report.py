"""`sft report PATH... [metric=...] [group_by=...] [out=DIR] [plots=true]`: tables and plots over runs.

PATHs are run dirs, sweep dirs (searched recursively) or globs. Runs are grouped by the config keys that
differ between them (seeds aside), and each group shows mean +- sample std over its runs and their
number. Files written to `out`: report.csv (groups), runs.csv (one row per run), report.md, and PNG plots
(learning curves; a lambda x tau heatmap when both vary; label efficiency when labels_per_class varies).

This module imports only the standard library at import time: `sft --help` must stay instant, and the
sweep callback (sftcli.sweep) reuses the run readers below inside Hydra's process.
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcli.errors import ConfigError, UserError
from sftcli.runlog import read_metrics

OPTIONS = {
    "metric": "summary.json metric to rank and plot (default test/accuracy)",
    "group_by": "comma-separated config keys to group by (default: the keys that differ between runs)",
    "out": "directory for report.csv, report.md and the plots (default: the first PATH if a dir, else ./report)",
    "plots": "write PNG plots (true|false, default true)",
    "debug": "show tracebacks (handled by sft itself)",
}
USAGE = (
    "usage: sft report PATH... [metric=test/accuracy] [group_by=lambda,tau] [out=DIR] [plots=true]\n\n"
    "PATH: run dirs, sweep dirs (searched recursively) or globs (quote them).\noptions:\n"
    + "\n".join(f"  {k + '=':<10} {v}" for k, v in OPTIONS.items() if k != "debug")
)
# Always shown next to the chosen metric (deduplicated).
EXTRA_METRICS = ("test/macro_f1", "val/accuracy")
# Keys that never define a group: seeds are what we average over; the rest only name or place a run.
IGNORED_KEYS = {
    "seed",
    "run_name",
    "run_root",
    "cache_dir",
    "resume",
    "allow_resume_mismatch",
    "debug",
    "trainer.progress",
}
# loss.weight / loss.tau are `${lambda}` / `${tau}` in YAML: the same knob twice, shown once.
ALIASES = {"loss.weight": "lambda", "loss.tau": "tau"}
STRATEGY_KEY = "strategy"
LPC_KEY = "data.labels_per_class"
# Keys shown first (when they vary), in this order; the rest follow in config order.
KEY_ORDER = (STRATEGY_KEY, LPC_KEY, "lambda", "tau")
STRATEGY_ORDER = {"none": 0, "alternate": 1, "mix": 2}
LABEL_EFFICIENCY = "Label efficiency"
CURVE_KEYS = ("train/loss", "train/loss_sup", "train/loss_con", "val/accuracy")


# ----------------------------------------------------------------------------------------------------
# reading runs (also used by sftcli.sweep)


@dataclass
class Run:
    """One run directory as written by `sft train` (completed, failed, or without a summary yet)."""

    path: Path
    status: str  # completed | failed | incomplete
    config: dict[str, Any]  # flattened dotted keys, see flat_config()
    overrides: list[str]
    summary: dict[str, Any]
    error: str | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.summary.get("seed"))


def _read_yaml(path: Path) -> Any:
    import yaml  # PyYAML ships with omegaconf/Hydra

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's config.yaml as dotted keys, with `strategy` = strategy.name or "none" (the baseline)."""
    flat = flatten(raw)
    flat[STRATEGY_KEY] = flat.pop("strategy.name", None) or "none"
    for alias, canonical in ALIASES.items():
        if alias in flat and flat.get(canonical) == flat[alias]:
            del flat[alias]
    return flat


def load_run(path: Path) -> Run:
    """Read a run dir. A job that failed config validation has summary.json but no config.yaml: its
    overrides still come from .hydra/overrides.yaml and its config from Hydra's .hydra/config.yaml."""
    summary: dict[str, Any] = {}
    error = None
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            summary, error = {"status": "failed"}, f"unreadable summary.json: {exc}"
    if not summary:
        status = "incomplete"
        error = "no summary.json (still running, or the process was killed)"
    else:
        status = str(summary.get("status", "completed"))
        if status != "completed":
            error = error or str(summary.get("error") or "failed without an error message")
    raw = _read_yaml(path / "config.yaml")
    if not isinstance(raw, dict):
        raw = _read_yaml(path / ".hydra" / "config.yaml")  # unresolved, but names the choices
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml")
    return Run(
        path=path,
        status=status,
        config=flat_config(raw) if isinstance(raw, dict) else {},
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        summary=summary,
        error=error,
    )


def is_run_dir(path: Path) -> bool:
    """A `sft train` run: config.yaml, or a summary.json next to Hydra's record (a job that failed config
    validation). `sft eval` dirs (eval.json, no summary.json) are not runs."""
    if (path / "config.yaml").is_file():
        return True
    return (path / "summary.json").is_file() and (path / ".hydra" / "overrides.yaml").is_file()


def _expand(arg: str) -> list[Path]:
    path = Path(arg).expanduser()
    if path.exists():
        return [path]
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True))
        if matches:
            return matches
        raise UserError(f"{arg}: the pattern matches nothing")
    raise UserError(f"{arg}: no such file or directory")


def find_runs(args: Sequence[str]) -> list[Run]:
    """Run dirs under the given paths (recursively), each once, in path order."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for arg in args:
        found = 0
        for path in _expand(arg):
            if path.is_file():  # a run's config.yaml / summary.json names its run
                path = path.parent
            for run_dir in _run_dirs_under(path):
                key = run_dir.resolve()
                found += 1
                if key not in seen:
                    seen.add(key)
                    runs.append(load_run(run_dir))
        if not found:
            raise UserError(f"{arg}: no runs found (a run dir holds config.yaml and summary.json)")
    return runs


def _run_dirs_under(path: Path) -> Iterable[Path]:
    if is_run_dir(path):
        yield path
        return
    candidates = {p.parent for p in path.rglob("summary.json")} | {
        p.parent for p in path.rglob("config.yaml")
    }
    for run_dir in sorted(candidates, key=_natural):
        # Skip checkpoint dirs (their config.json is not ours) and Hydra's own .hydra/config.yaml.
        if run_dir.name != ".hydra" and is_run_dir(run_dir):
            yield run_dir


def _natural(path: Path) -> list[Any]:
    # Sweep job dirs are 0, 1, ..., 10: sort them as numbers, not strings.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


# ----------------------------------------------------------------------------------------------------
# grouping and statistics


@dataclass
class Group:
    key: tuple[Any, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [v for v in (_number(r.summary.get(metric)) for r in self.runs) if v is not None]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is None for a single value, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {'-' if std is None else f'{std:.4f}'}"


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys with more than one value among the runs that have them (seeds and paths aside)."""
    values: dict[str, set[Any]] = defaultdict(set)
    order: list[str] = []
    for run in runs:
        for key, value in run.config.items():
            if key in IGNORED_KEYS:
                continue
            if key not in values:
                order.append(key)
            values[key].add(_hashable(value))
    keys = [k for k in order if len(values[k]) > 1]
    return sorted(
        keys, key=lambda k: (KEY_ORDER.index(k) if k in KEY_ORDER else len(KEY_ORDER), order.index(k))
    )


def resolve_group_keys(requested: list[str], runs: Sequence[Run]) -> list[str]:
    """User-named keys checked against the runs' configs; a unique suffix works (labels_per_class)."""
    known = sorted({k for r in runs for k in r.config})
    out = []
    for key in requested:
        key = {"strategy.name": STRATEGY_KEY, "loss.weight": "lambda", "loss.tau": "tau"}.get(key, key)
        if key in known:
            out.append(key)
            continue
        suffix = [k for k in known if k.endswith("." + key)]
        if len(suffix) == 1:
            out.append(suffix[0])
            continue
        hint = difflib.get_close_matches(key, known, n=3)
        extra = f" (did you mean {', '.join(hint)}?)" if hint else f"; keys: {', '.join(known)}"
        raise ConfigError(f"group_by: {key!r} is not a config key of these runs{extra}")
    return out


def _sort_value(key: str, value: Any) -> tuple[Any, ...]:
    if key == STRATEGY_KEY:
        return (0, STRATEGY_ORDER.get(str(value), 99), str(value))
    if value is None:
        # labels_per_class=null means all labels: after every number; other nulls (no strategy) first.
        return (2, 0, "") if key == LPC_KEY else (-1, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple[Any, ...], Group] = {}
    for run in runs:
        key = tuple(_hashable(run.config.get(k)) for k in keys)
        groups.setdefault(key, Group(key)).runs.append(run)
    return sorted(
        groups.values(), key=lambda g: [_sort_value(k, v) for k, v in zip(keys, g.key, strict=True)]
    )


def show_value(key: str, value: Any) -> str:
    if value is None:
        return "all" if key == LPC_KEY else "-"
    return str(value)


def group_label(keys: Sequence[str], group_key: tuple[Any, ...]) -> str:
    """Short legend text: "mix lambda=0.5 tau=0.05"; keys a group lacks (the baseline's lambda) are left out."""
    parts = []
    for key, value in zip(keys, group_key, strict=True):
        if key == STRATEGY_KEY:
            parts.append(str(value))
        elif value is not None or key == LPC_KEY:
            parts.append(f"{key.rsplit('.', 1)[-1] if key == LPC_KEY else key}={show_value(key, value)}")
    return " ".join(parts) or "all runs"


def distinguishing_overrides(runs: Sequence[Run]) -> dict[Path, str]:
    """Each run's overrides minus those shared by every run (model=tiny, run_root=... are noise)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    out = {}
    for run in runs:
        own = [o for o in run.overrides if o not in common and not o.startswith(("run_root=", "hydra."))]
        out[run.path] = " ".join(own) or " ".join(run.overrides)
    return out


# ----------------------------------------------------------------------------------------------------
# the command


@dataclass
class Options:
    paths: list[str]
    metric: str = "test/accuracy"
    group_by: list[str] | None = None
    out: Path | None = None
    plots: bool = True


def parse_args(args: Sequence[str]) -> Options:
    """PATHs and key=value options; an arg that exists on disk is always a path (sweep subdirs may be
    named lambda=0.1), any other `identifier=value` must be a known option."""
    paths: list[str] = []
    opts: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.replace("_", "").replace("-", "").isalnum() and not Path(arg).expanduser().exists():
            key = key.lstrip("-").replace("-", "_")
            if key not in OPTIONS:
                hint = difflib.get_close_matches(key, list(OPTIONS), n=1)
                raise ConfigError(
                    f"sft report: unknown option {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; options: {', '.join(k for k in OPTIONS if k != 'debug')}"
                )
            opts[key] = value
        elif arg.startswith("-"):
            raise ConfigError(
                f"sft report: unknown flag {arg!r}; options are key=value like the other commands, "
                f"e.g. metric=test/accuracy group_by=lambda,tau ({', '.join(k for k in OPTIONS if k != 'debug')})"
            )
        else:
            paths.append(arg)
    if not paths:
        raise ConfigError("sft report: give at least one run dir, sweep dir or glob\n\n" + USAGE)
    out = Options(paths=paths)
    if opts.get("metric"):
        out.metric = opts["metric"]
    if "group_by" in opts:
        out.group_by = [k.strip() for k in opts["group_by"].strip("[]").split(",") if k.strip()]
    if opts.get("out"):
        out.out = Path(opts["out"]).expanduser()
    if "plots" in opts:
        value = opts["plots"].lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"plots: {opts['plots']!r} is not a boolean (true|false)")
        out.plots = value in ("true", "1", "yes")
    return out


def run_report(args: list[str]) -> int:
    """`sft report`: print the grouped table and write report files; returns the exit code."""
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return 0
    opts = parse_args(args)
    runs = find_runs(opts.paths)
    done = [r for r in runs if r.status == "completed"]
    failed = [r for r in runs if r.status != "completed"]
    if done:
        metrics = sorted({k for r in done for k, v in r.summary.items() if _number(v) is not None})
        if opts.metric not in metrics:
            hint = difflib.get_close_matches(opts.metric, metrics, n=3)
            raise ConfigError(
                f"metric: {opts.metric!r} is in no run's summary.json"
                + (f" (did you mean {', '.join(hint)}?)" if hint else f"; metrics: {', '.join(metrics)}")
            )
    keys = resolve_group_keys(opts.group_by, runs) if opts.group_by is not None else varying_keys(done)
    groups = group_runs(done, keys)
    metric_cols = [opts.metric, *[m for m in EXTRA_METRICS if m != opts.metric]]
    out_dir = opts.out or (
        Path(opts.paths[0]).expanduser() if Path(opts.paths[0]).expanduser().is_dir() else Path("report")
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    print_tables(groups, keys, metric_cols, failed, runs, len(done))
    rows = group_rows(groups, keys, metric_cols)
    write_csv(out_dir / "report.csv", rows)
    write_runs_csv(out_dir / "runs.csv", runs, keys, metric_cols)
    plots: dict[str, Path] = {}
    if opts.plots and done:
        plots = make_plots(out_dir, groups, keys, opts.metric)
    points = label_efficiency(groups, keys, opts.metric)
    write_markdown(out_dir / "report.md", args, rows, failed, runs, plots, opts.metric, points)
    written = ["report.csv", "runs.csv", "report.md", *[p.name for p in plots.values()]]
    print(f"report written to {out_dir}: {', '.join(written)}")
    return 0


def group_rows(
    groups: Sequence[Group], keys: Sequence[str], metric_cols: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        row: dict[str, Any] = {k: show_value(k, v) for k, v in zip(keys, group.key, strict=True)}
        row["n"] = len(group.runs)
        row["seeds"] = " ".join(str(r.seed) for r in group.runs)
        for metric in metric_cols:
            mean, std = mean_std(group.values(metric))
            row[f"{metric} mean"], row[f"{metric} std"] = mean, std
        rows.append(row)
    return rows


def print_tables(
    groups: Sequence[Group],
    keys: Sequence[str],
    metric_cols: Sequence[str],
    failed: Sequence[Run],
    runs: Sequence[Run],
    n_done: int,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped or captured output: never fold a "mean ± std" cell across lines.
        console = Console(width=max(console.width, 250))
    if groups:
        table = Table(
            title=f"{n_done} completed run(s) in {len(groups)} group(s)",
            caption="mean ± sample std over each group's runs (seeds); n = runs",
        )
        for key in keys or ["group"]:
            table.add_column(key, no_wrap=True)
        table.add_column("n", justify="right")
        for metric in metric_cols:
            table.add_column(metric, justify="right", no_wrap=True)
        for group in groups:
            cells = [show_value(k, v) for k, v in zip(keys, group.key, strict=True)] or ["all runs"]
            cells.append(str(len(group.runs)))
            cells += [fmt_mean_std(*mean_std(group.values(m))) for m in metric_cols]
            table.add_row(*cells)
        console.print(table)
    if failed:
        overrides = distinguishing_overrides(runs)
        table = Table(title=f"{len(failed)} run(s) not completed")
        table.add_column("run")
        table.add_column("status")
        table.add_column("overrides")
        table.add_column("error")
        for run in failed:
            table.add_row(_display_path(run.path), run.status, overrides[run.path], run.error or "")
        console.print(table)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    tmp.replace(path)


def write_runs_csv(path: Path, runs: Sequence[Run], keys: Sequence[str], metric_cols: Sequence[str]) -> None:
    overrides = distinguishing_overrides(runs)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": str(run.path), "status": run.status, "seed": run.seed}
        row.update({k: show_value(k, run.config.get(k)) for k in keys})
        row.update({m: _number(run.summary.get(m)) for m in metric_cols})
        row["overrides"] = overrides[run.path]
        row["error"] = run.error or ""
        rows.append(row)
    write_csv(path, rows)


def write_markdown(
    path: Path,
    args: Sequence[str],
    rows: Sequence[dict[str, Any]],
    failed: Sequence[Run],
    runs: Sequence[Run],
    plots: dict[str, Path],
    metric: str,
    points: Sequence[EfficiencyPoint] = (),
) -> None:
    lines = ["# sft report", "", f"Command: `sft report {' '.join(args)}`", ""]
    if rows:
        metric_names = [c[: -len(" mean")] for c in rows[0] if c.endswith(" mean")]
        head = [c for c in rows[0] if not c.endswith((" mean", " std")) and c != "seeds"] + metric_names
        lines += [
            f"Mean ± sample std over runs (seeds); n = runs per group. Ranked metric: `{metric}`.",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        for row in rows:
            cells = [str(row[c]) for c in head if c not in metric_names]
            cells += [fmt_mean_std(row[f"{m} mean"], row[f"{m} std"]) for m in metric_names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if points:
        lines += [
            "## Label efficiency",
            "",
            f"`{metric}` per strategy and labels per class; where several lambda/tau settings ran, the one "
            "with the best mean val/accuracy is shown (chosen on validation, never on test).",
            "",
            "| line | labels per class | n | mean ± std | lambda/tau |",
            "|---|---|---|---|---|",
        ]
        for p in sorted(
            points,
            key=lambda p: (STRATEGY_ORDER.get(p.line, 99), p.line, _sort_value(LPC_KEY, p.labels_per_class)),
        ):
            lines.append(
                f"| {p.line} | {show_value(LPC_KEY, p.labels_per_class)} | {p.n} | "
                f"{fmt_mean_std(p.mean, p.std)} | {p.setting or '-'} |"
            )
        lines.append("")
        if LABEL_EFFICIENCY in plots:
            lines += [f"![{LABEL_EFFICIENCY}]({plots[LABEL_EFFICIENCY].name})", ""]
    if failed:
        overrides = distinguishing_overrides(runs)
        lines += ["## Runs not completed", "", "| run | status | overrides | error |", "|---|---|---|---|"]
        for run in failed:
            error = (run.error or "").replace("\n", " ").replace("|", "\\|")
            lines.append(f"| {run.path} | {run.status} | `{overrides[run.path]}` | {error} |")
        lines.append("")
    for title, file in plots.items():
        if not (title == LABEL_EFFICIENCY and points):  # already shown under its table
            lines += [f"## {title}", "", f"![{title}]({file.name})", ""]
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# plots


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
                value = _number(record.get(key))
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

    panels = sorted(cells, key=lambda k: [_sort_value(keys[i], v) for i, v in zip(others, k, strict=True)])[
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


@dataclass
class EfficiencyPoint:
    line: str
    labels_per_class: Any
    mean: float
    std: float | None
    n: int
    setting: str  # the lambda/tau of this point ("" without a contrastive term)


def label_efficiency(
    groups: Sequence[Group], keys: Sequence[str], metric: str, choose_by: str = "val/accuracy"
) -> list[EfficiencyPoint]:
    """One line per strategy (and any other varying key except lambda/tau); where one (line, labels per
    class) point has several lambda/tau settings, the one with the best mean `choose_by` (validation,
    never the reported test metric) is shown."""
    if LPC_KEY not in keys:
        return []
    ki = keys.index(LPC_KEY)
    hyper = [i for i, k in enumerate(keys) if k in ("lambda", "tau")]
    line_idx = [i for i in range(len(keys)) if i != ki and i not in hyper]
    cands: dict[tuple[tuple[Any, ...], Any], list[Group]] = defaultdict(list)
    for group in groups:
        cands[(tuple(group.key[i] for i in line_idx), group.key[ki])].append(group)
    points = []
    for (line_key, lpc), options in cands.items():
        best = max(options, key=lambda g: mean_std(g.values(choose_by))[0] or -math.inf)
        mean, std = mean_std(best.values(metric))
        if mean is None:
            continue
        setting = " ".join(f"{keys[i]}={show_value(keys[i], best.key[i])}" for i in hyper
                           if best.key[i] is not None)
        label = (
            " ".join(
                show_value(keys[i], v) if keys[i] == STRATEGY_KEY else f"{keys[i]}={show_value(keys[i], v)}"
                for i, v in zip(line_idx, line_key, strict=True)
            )
            or metric
        )
        points.append(EfficiencyPoint(label, lpc, mean, std, len(best.values(metric)), setting))
    return points


def plot_label_efficiency(
    path: Path, groups: Sequence[Group], keys: Sequence[str], metric: str
) -> Path | None:
    points = label_efficiency(groups, keys, metric)
    xs_all = sorted({p.labels_per_class for p in points}, key=lambda v: _sort_value(LPC_KEY, v))
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


if __name__ == "__main__":
    sys.exit(run_report(sys.argv[1:]))
