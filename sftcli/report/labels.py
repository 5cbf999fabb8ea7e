"""Legend labels for the plots: each line named by the few settings that set it apart, shortened
("mix, K=16, lambda=0.5" for `+strategy=mix data.labels_per_class=16 lambda=0.5`), and the settings
every line shares, said once in the title instead of in every label.

A line's settings are the command-line overrides all of its runs share (what the user typed, so a recipe
reads `self_training`, not the dozen keys it sets); when some run has no record of its overrides, they
are the config keys that differ between the report's groups.
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftcli.report.collect import STRATEGY_KEY, Run
from sftcli.report.groups import LPC_KEY, EfficiencyPoint, sort_value

# Overrides that name or place a run (or are averaged over) rather than set it apart.
NOISE_KEYS = ("seed", "run_root", "run_name", "cache_dir", "resume", "allow_resume_mismatch", "debug",
              "trainer.progress")
# Group choices whose value alone names a line: "+strategy=mix" reads "mix".
NAME_KEYS = (STRATEGY_KEY, "strategy.name", "recipe", "anchor")  # anchor: experiments/anchor_setfit.py
# Keys not named by their last component: labels_per_class is the DESIGN's K; loss.weight / loss.tau
# are the YAML spellings of the top-level lambda / tau.
SHORT_NAMES = {LPC_KEY: "K", "loss.weight": "lambda", "loss.tau": "tau"}
# The override spellings of lambda and tau.
HYPER_OVERRIDES = ("lambda", "tau", "loss.weight", "loss.tau")
BASELINE = "supervised"
MAX_LABEL = 48  # characters; longer labels are cut at a word with an ellipsis


@dataclass
class Legend:
    labels: list[str]
    shared: list[str] = field(default_factory=list)  # settings of every line, shortened
    where_set: list[str] = field(default_factory=list)  # one value on every line that sets the key
    notes: list[str] = field(default_factory=list)  # what a reader needs to read the labels

    def subtitle(self, width: int = 110) -> str:
        """The shared settings as one title line ("" when there are none), cut at `width` characters."""
        # Nearest to what the lines compare first; the (often long) shared settings last, cut if need be.
        parts = []
        if self.where_set:
            parts.append("where set: " + ", ".join(self.where_set))
        parts += self.notes
        if self.shared:
            parts.append("all runs: " + ", ".join(self.shared))
        return textwrap.shorten("; ".join(parts), width, placeholder=" …") if parts else ""


def parse_override(text: str) -> tuple[str, str]:
    """ "+strategy=mix" -> ("strategy", "mix"); "~key" (a deletion) -> ("~key", "")."""
    key, _, value = text.partition("=")
    return key.lstrip("+"), value


def _is_noise(key: str) -> bool:
    return key in NOISE_KEYS or key.startswith("hydra.")


def run_settings(run: Run) -> dict[str, str] | None:
    """The run's overrides as key -> value, without the noise; None when the run has no record of them
    (a plain `sft train` has one: Hydra's empty .hydra/overrides.yaml)."""
    if not run.overrides and not (run.path / ".hydra" / "overrides.yaml").is_file():
        return None
    pairs = (parse_override(o) for o in run.overrides)
    return {k: v for k, v in pairs if not _is_noise(k)}


def config_settings(keys: Sequence[str], values: Sequence[Any]) -> dict[str, str]:
    """A group's differing config values in override form; keys the group lacks (the baseline's lambda)
    are left out, and the baseline's strategy "none" too, so it reads as the supervised line."""
    out = {}
    for key, value in zip(keys, values, strict=True):
        if key == LPC_KEY:
            out[key] = "null" if value is None else str(value)
        elif value is not None and not (key == STRATEGY_KEY and value == "none"):
            out[key] = str(value)
    return out


def short_token(key: str, value: str, ambiguous: set[str]) -> str:
    """One setting as a legend word: a name key's value, K=16 / K=all, else the key's last component
    (the whole key where two different keys end the same)."""
    if key in NAME_KEYS:
        return value
    if key == LPC_KEY:
        return f"K={'all' if value.lower() in ('null', 'none', '~', '') else value}"
    name = SHORT_NAMES.get(key, key.rsplit(".", 1)[-1])
    if name in ambiguous:
        name = key
    return f"{name}={value}" if value else name


def _tokens(settings: Mapping[str, str], ambiguous: set[str]) -> list[str]:
    # The report's own key order (names, K, lambda, tau), then the rest in the order they were typed.
    first = [*NAME_KEYS, LPC_KEY, "lambda", "tau"]
    order = sorted(settings, key=lambda k: first.index(k) if k in first else len(first))
    return [short_token(k, settings[k], ambiguous) for k in order]


def _ambiguous(all_keys: Sequence[str]) -> set[str]:
    seen: dict[str, set[str]] = {}
    for key in all_keys:
        seen.setdefault(SHORT_NAMES.get(key, key.rsplit(".", 1)[-1]), set()).add(key)
    return {name for name, keys in seen.items() if len(keys) > 1}


def short_labels(lines: Sequence[Mapping[str, str]]) -> Legend:
    """Labels for lines given each line's settings (key -> value, override form). Settings every line
    shares go to Legend.shared; a key with one value on every line that sets it (the strategies' lambda
    when only the baseline lacks it) goes to Legend.where_set, as long as the labels stay distinct."""
    if not lines:
        return Legend([])
    keys = list(dict.fromkeys(k for line in lines for k in line))
    shared = [k for k in keys if all(line.get(k) == lines[0].get(k) and k in line for line in lines)]
    rest = [{k: v for k, v in line.items() if k not in shared} for line in lines]
    ambiguous = _ambiguous(keys)

    where_set: list[str] = []
    for key in [k for k in keys if k not in shared and k not in NAME_KEYS]:
        values = {line[key] for line in rest if key in line}
        if len(values) != 1:
            continue
        trial = [{k: v for k, v in line.items() if k != key} for line in rest]
        if len({tuple(sorted(t.items())) for t in trial}) == len({tuple(sorted(r.items())) for r in rest}):
            rest = trial
            where_set.append(key)

    named = any(k in NAME_KEYS for line in rest for k in line)
    labels = []
    for line in rest:
        tokens = _tokens(line, ambiguous)
        if named and not any(k in NAME_KEYS for k in line):
            tokens.insert(0, BASELINE)
        # A line with nothing of its own runs on the defaults the others change.
        label = ", ".join(tokens) or (BASELINE if named else "all runs" if len(rest) == 1 else "defaults")
        labels.append(textwrap.shorten(label, MAX_LABEL, placeholder=" …"))
    return Legend(
        labels,
        notes=["K = labels per class"] if any(LPC_KEY in line for line in rest) else [],
        shared=_tokens({k: lines[0][k] for k in shared}, ambiguous),
        where_set=[
            short_token(k, next(line[k] for line in lines if k in line), ambiguous) for k in where_set
        ],
    )


def _without(settings: dict[str, str] | None, ignore: Collection[str]) -> dict[str, str] | None:
    return None if settings is None else {k: v for k, v in settings.items() if k not in ignore}


def legend_for(
    run_sets: Sequence[Sequence[Run]], fallback: Sequence[Mapping[str, str]], ignore: Collection[str] = ()
) -> Legend:
    """Labels for lines drawn from these runs: from the overrides each line's runs share, or, when a run
    has no overrides record or two lines would read the same, from `fallback` (each line's differing
    config values, see config_settings). Keys in `ignore` (what the x axis shows) never name a line."""
    fallback = [{k: v for k, v in line.items() if k not in ignore} for line in fallback]
    per_run = [[_without(run_settings(r), ignore) for r in runs] for runs in run_sets]
    if all(per_run) and all(s is not None for sets in per_run for s in sets):
        lines = []
        for sets in per_run:
            common = dict(sets[0] or {})
            for s in sets[1:]:
                common = {k: v for k, v in common.items() if s is not None and s.get(k) == v}
            lines.append(common)
        legend = short_labels(lines)
        if len(set(legend.labels)) == len(legend.labels):
            return legend
    return short_labels(fallback)


def efficiency_lines(
    points: Sequence[EfficiencyPoint],
) -> tuple[list[tuple[str, list[EfficiencyPoint]]], Legend]:
    """The label-efficiency points as named lines, in the groups' order (supervised, alternate, mix, then
    the rest), each line's points by K; the same names in the plot's legend and in report.md."""
    by_line: dict[str, list[EfficiencyPoint]] = {}  # insertion order: the groups' order
    for p in points:
        by_line.setdefault(p.line, []).append(p)
    for pts in by_line.values():
        pts.sort(key=lambda p: sort_value(LPC_KEY, p.labels_per_class))
    # K is the x axis. Where a line's points ran with different lambda/tau (each the best on validation
    # at its K), no single value names the line: report.md lists them per point.
    per_point = any(len({p.setting for p in pts}) > 1 for pts in by_line.values())
    lines = list(by_line.values())
    legend = legend_for(
        [[r for p in pts for r in p.runs] for pts in lines],
        [config_settings(list(pts[0].line_values), list(pts[0].line_values.values())) for pts in lines],
        ignore={LPC_KEY, *(HYPER_OVERRIDES if per_point else ())},
    )
    if per_point:
        legend.notes.insert(0, "lambda/tau per point: the best on val/accuracy (report.md)")
    return list(zip(legend.labels, lines, strict=True)), legend
