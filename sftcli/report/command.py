"""The `sft report` command: options parsed, runs found and grouped, tables printed, files written."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sftcli.errors import ConfigError
from sftcli.report.find import find_runs
from sftcli.report.groups import finite_number, group_runs, label_efficiency, resolve_group_keys, varying_keys
from sftcli.report.plots import make_plots
from sftcli.report.tables import group_rows, print_tables, write_csv, write_markdown, write_runs_csv

OPTIONS = {
    "metric": "summary.json metric to rank and plot (default test/accuracy)",
    "group_by": "comma-separated config keys to group by (default: the keys that differ between runs)",
    "out": "directory for report.csv, report.md and the plots (default: the first PATH if a dir, else ./report)",
    "plots": "write PNG plots (true|false, default true)",
    "debug": "show tracebacks (handled by sft itself)",
}
USAGE = (
    "usage: sft report PATH... [metric=test/accuracy] [group_by=lambda,tau] [out=DIR] [plots=true]\n\n"
    "PATH: run dirs, sweep dirs (searched recursively), globs (quote them), or an earlier report's\n"
    "runs.csv (its tables and label-efficiency plot drawn again without the run dirs).\n"
    "plots: validation.png (the selection metric against step), label_efficiency.png (when\n"
    "labels_per_class varies), learning_curves.png (training losses), lambda_tau_heatmap.png.\noptions:\n"
    + "\n".join(f"  {k + '=':<10} {v}" for k, v in OPTIONS.items() if k != "debug")
)
# Always shown next to the chosen metric (deduplicated).
EXTRA_METRICS = ("test/macro_f1", "val/accuracy")


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
        metrics = sorted({k for r in done for k, v in r.summary.items() if finite_number(v) is not None})
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

