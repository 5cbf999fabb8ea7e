"""Grouping runs and their statistics: runs grouped by the config keys that differ between them (seeds
aside), mean and sample std per group, and the label-efficiency points (best setting per strategy and
labels per class, chosen on validation).
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcli.errors import ConfigError
from sftcli.report.collect import STRATEGY_KEY, Run

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
LPC_KEY = "data.labels_per_class"
# Keys shown first (when they vary), in this order; the rest follow in config order.
KEY_ORDER = (STRATEGY_KEY, LPC_KEY, "lambda", "tau")
STRATEGY_ORDER = {"none": 0, "alternate": 1, "mix": 2}
# The title of the label-efficiency plot and of its section in report.md.
LABEL_EFFICIENCY = "Label efficiency"


@dataclass
class Group:
    key: tuple[Any, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [v for v in (finite_number(r.summary.get(metric)) for r in self.runs) if v is not None]


def finite_number(value: Any) -> float | None:
    """A metric value as a float, or None when it is not a finite number (NaN, a string, a bool)."""
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
    """Config keys with more than one value among the runs (seeds and paths aside). A key that only some
    runs have (`anchor` of experiments/anchor_setfit.py's runs) varies too: it sets those runs apart."""
    values: dict[str, set[Any]] = defaultdict(set)
    order: list[str] = []
    for run in runs:
        for key, value in run.config.items():
            if key in IGNORED_KEYS:
                continue
            if key not in values:
                order.append(key)
            values[key].add(_hashable(value))
    keys = [k for k in order if len(values[k]) > 1 or any(k not in r.config for r in runs)]
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


def sort_value(key: str, value: Any) -> tuple[Any, ...]:
    """The sort key of a group key's value: strategies in their own order, numbers before strings."""
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
        groups.values(), key=lambda g: [sort_value(k, v) for k, v in zip(keys, g.key, strict=True)]
    )


def show_value(key: str, value: Any) -> str:
    if value is None:
        return "all" if key == LPC_KEY else "-"
    return str(value)


def distinguishing_overrides(runs: Sequence[Run]) -> dict[Path, str]:
    """Each run's overrides minus those shared by every run (model=tiny, run_root=... are noise)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    out = {}
    for run in runs:
        own = [o for o in run.overrides if o not in common and not o.startswith(("run_root=", "hydra."))]
        out[run.path] = " ".join(own) or " ".join(run.overrides)
    return out


@dataclass
class EfficiencyPoint:
    line: str
    labels_per_class: Any
    mean: float
    std: float | None
    n: int
    setting: str  # the lambda/tau of this point ("" without a contrastive term)
    runs: list[Run] = field(default_factory=list)  # the chosen group's runs, for the plot's legend
    line_values: dict[str, Any] = field(default_factory=dict)  # the config values that define the line


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
        points.append(
            EfficiencyPoint(
                label,
                lpc,
                mean,
                std,
                len(best.values(metric)),
                setting,
                runs=list(best.runs),
                line_values={keys[i]: v for i, v in zip(line_idx, line_key, strict=True)},
            )
        )
    return points
