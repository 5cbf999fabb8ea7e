"""Before Hydra runs: compose and validate a command line once, turn Hydra's error texts into sft's
messages (a did-you-mean, the forgotten +), and check that an optional Hydra plugin a command names is
installed. Every problem here is a ConfigError: exit 2, before a run dir exists."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftcli.errors import ConfigError, first_line

# hydra/GROUP=OPTION choices that come from optional packages: (group, options) -> (module, what, extra).
PLUGINS = {
    ("hydra/sweeper", ("optuna",)): ("hydra_plugins.hydra_optuna_sweeper", "the Optuna sweeper plugin "
                                     "(hydra-optuna-sweeper)", "optuna"),
    ("hydra/launcher", ("submitit_local", "submitit_slurm")): ("hydra_plugins.hydra_submitit_launcher",
                                                               "Hydra's submitit launcher plugin "
                                                               "(hydra-submitit-launcher)", "submitit"),
}


def check_plugins(args: list[str]) -> None:
    """hydra/sweeper=optuna and hydra/launcher=submitit_* need optional plugins; without one Hydra only
    says the option is missing, so say which pip command installs it."""
    from importlib.util import find_spec

    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        for (group, options), (module, what, extra) in PLUGINS.items():
            if key != group or value not in options:
                continue
            try:
                installed = find_spec(module) is not None
            except ModuleNotFoundError:  # no Hydra plugin at all
                installed = False
            if not installed:
                raise ConfigError(f"{group}={value} needs {what}: pip install 'sftcli[{extra}]' "
                                  f"(in a checkout: pip install -e \".[{extra}]\")")


@dataclass
class Planned:
    """A command line as checked before Hydra runs: its typed config (None when only the running job can
    resolve it, and in a sweep, whose jobs are validated one by one) and the directory Hydra will make."""

    config: Any
    directory: Path | None  # the run dir (single run) or the sweep dir (-m); None when not resolvable yet
    continues: bool  # resume= is set: the run continues in a directory that may hold a run already


def check_config(command: str, overrides: list[str], multirun: bool = False) -> Planned:
    """The typed config of one `sft train` / `sft eval` command line, through the same composition and
    parse functions as the run itself, and the directory it will write; raises ConfigError listing the
    problems. A sweep is composed as its first job, to find its directory and the mistakes all its jobs
    share; each job is validated when it runs (one bad job does not stop the others)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sftcli.catalog import config_dir
    from sftcli.config import parse_eval, parse_train

    if multirun:
        overrides = _first_job(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name=command):
            cfg = compose(config_name=command, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(command, str(exc), overrides)) from None
    except ValueError as exc:  # Hydra's own check of a group's value (model=1, data=null)
        raise ConfigError(_group_value_message(command, overrides) or f"invalid overrides: {exc}") from None
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # Values may read Hydra's own config (run_name=${hydra:job.name}) through its resolver.
    HydraConfig.instance().set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    _resolved(job, None)  # first without Hydra's section, so a message names the user's key (run_name)
    directory = Path(str(_resolved(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
    continues = command == "train" and job.get("resume") is not None
    if multirun:
        return Planned(None, directory, continues)
    typed = parse_train(job, overrides) if command == "train" else parse_eval(job)
    return Planned(typed, directory, continues)


def _resolved(cfg: Any, key: str | None) -> Any:
    """cfg's value at key (None: the whole config) with its interpolations resolved; an interpolation
    that cannot be resolved (${foo}, ${oc.env:UNSET}) is a ConfigError naming the key that holds it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True) if key is None else OmegaConf.select(cfg, key)
    except OmegaConfBaseException as exc:
        where = getattr(exc, "full_key", None) or key or "config"
        raise ConfigError(f"{where}: cannot be resolved: {first_line(exc)}") from None


def _first_job(overrides: list[str]) -> list[str]:
    """A multirun's overrides as its first job gets them: each sweep (a,b / range() / choice()) at its
    first value; a sweep without one (an Optuna interval) left at its default."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"invalid overrides: {first_line(exc)}") from None
    out = []
    for o in parsed:
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        try:
            first = next(iter(o.sweep_string_iterator()))
        except (HydraException, StopIteration, TypeError, ValueError):
            continue
        out.append(f"{o.get_key_element()}={first}")
    return out


def _group_value_message(command: str, overrides: list[str]) -> str | None:
    """`model=1`, `data=null`: a config group takes one of its options' names."""
    from sftcli.catalog import config_groups

    groups = config_groups()
    for arg in overrides:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in groups and value not in groups[key]:
            return f"{key}={value}: {key} takes the name of an option: {', '.join(groups[key])}"
    return None


def composition_message(command: str, text: str, overrides: list[str]) -> str:
    """sft's message for a composition error of Hydra's (its text parsed: Hydra has no error codes)."""
    import re

    from sftcli.catalog import config_groups

    first = text.strip().splitlines()[0] if text.strip() else text
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        from sftcli.config import RENAMED_KEYS, unknown_key_message

        key = m.group(1)
        added = added_group_message(command, key, overrides)
        if added:
            return added
        return f"{key}: {unknown_key_message(key, None if key in RENAMED_KEYS else closest_key(command, key))}"
    m = re.search(r"Multiple values for (\w+)", text)
    if m:
        group = m.group(1)
        return (f"+{group}=...: {group} is already chosen (by +recipe=... or the defaults); "
                f"to pick another option write {group}=OPTION, without the +")
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        options = config_groups().get(group, [])
        hint = difflib.get_close_matches(option, options, n=1)
        extra = f" (did you mean {group}={hint[0]}?)" if hint else ""
        return f"{group}={option}: no such option{extra}; options: {', '.join(options)}"
    return f"invalid overrides: {first}"


def added_group_message(command: str, key: str, overrides: list[str]) -> str | None:
    """`strategy=mix` or `strategy.name=mix` for a group that the command adds with a `+` and that was not
    added: name the `+GROUP=OPTION` that was meant, not a spelling guess."""
    from sftcli.catalog import config_groups
    from sftcli.helptext import ADDED_GROUPS

    group, _, sub = key.partition(".")
    if group not in ADDED_GROUPS.get(command, {}):
        return None
    value = next((a.split("=", 1)[1] for a in overrides if "=" in a and a.split("=", 1)[0].lstrip("+~") == key), "")
    options = config_groups().get(group, [])
    if value in options:
        return f"{key}={value}: no {group} is chosen; {group} options are added with a '+': write +{group}={value}"
    if not sub:
        return f"{key}={value}: {group} options are added with a '+': +{group}=OPTION (options: {', '.join(options)})"
    from sftcli.config.store import group_keys

    if sub in group_keys(command, group):
        return (f"{key}: no {group} is chosen, so it has no {sub!r}; add one first with +{group}=OPTION "
                f"(options: {', '.join(options)})")
    return None


def closest_key(command: str, key: str) -> str | None:
    """The known key most like `key` (for "did you mean"), over the composed config and the added groups."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sftcli.catalog import config_dir
    from sftcli.config.store import group_keys

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name=command):
        base = OmegaConf.to_container(compose(config_name=command), resolve=False)

    def flat(d: Any, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            full = f"{prefix}{k}"
            out.append(full)
            if isinstance(v, dict):
                out.extend(flat(v, full + "."))
        return out

    keys = flat(base) + [f"strategy.{k}" for k in group_keys(command, "strategy")]
    hint = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return hint[0] if hint else None
