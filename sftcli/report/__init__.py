"""`sft report PATH... [metric=...] [group_by=...] [out=DIR] [plots=true]`: tables and plots over runs.

PATHs are run dirs, sweep dirs (searched recursively), globs, or an earlier report's runs.csv. Runs are
grouped by the config keys that differ between them (seeds aside), and each group shows mean +- sample
std over its runs and their number. Files written to `out`: report.csv (groups), runs.csv (one row per
run), report.md, and PNG plots (the validation metric against step; label efficiency when
labels_per_class varies; the training losses; a lambda x tau heatmap when both vary).

Modules: collect (reading run dirs), runs_csv (reading a runs.csv back), groups (grouping and
statistics), labels (short legend labels), tables (console, csv, markdown), plots (PNG), command (the
options and `run_report`). The package imports only the standard library at import time: `sft --help`
must stay instant, and the sweep callback (sftcli.sweep) reuses the run readers inside Hydra's process.
"""

from sftcli.report.collect import Run, flat_config, is_run_dir, load_run, read_yaml
from sftcli.report.command import run_report
from sftcli.report.find import find_runs

__all__ = ["Run", "find_runs", "flat_config", "is_run_dir", "load_run", "read_yaml", "run_report"]
