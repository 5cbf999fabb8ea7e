"""Tables: the grouped table and the runs not completed on the console, report.csv, runs.csv, report.md."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftcli.report.collect import Run
from sftcli.report.groups import (
    LABEL_EFFICIENCY,
    LPC_KEY,
    EfficiencyPoint,
    Group,
    distinguishing_overrides,
    finite_number,
    fmt_mean_std,
    mean_std,
    show_value,
)
from sftcli.report.labels import efficiency_lines


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
        row.update({m: finite_number(run.summary.get(m)) for m in metric_cols})
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
        named, _ = efficiency_lines(points)  # the lines as the plot's legend names them
        for label, pts in named:
            for p in pts:
                lines.append(
                    f"| {label} | {show_value(LPC_KEY, p.labels_per_class)} | {p.n} | "
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

