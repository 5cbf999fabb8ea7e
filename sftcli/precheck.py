"""Before Hydra makes a directory: validate a composed command line once, give Hydra's composition errors
sft's messages (a did-you-mean, the forgotten +), and check that an optional Hydra plugin a command names
is installed. Every problem here is a ConfigError: exit 2, before a run dir exists."""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftcli.errors import ConfigError, first_line

if TYPE_CHECKING:
    from sftcli.config import TrainConfig

log = logging.getLogger("sft")

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
    """A composed command line as checked before Hydra makes a directory: its typed config (None in a
    sweep, whose jobs are validated one by one as they run) and the directory Hydra will make."""

    config: Any
    directory: Path  # the run dir (single run) or the sweep dir (-m)
    continues: bool  # resume= is set: the run continues in a directory that may hold a run already


def check_composed(command: str, cfg: Any, multirun: bool, prepare: Any = None) -> Planned:
    """The typed config of a composed `sft train` / `sft eval` config and the directory it will write;
    raises ConfigError listing the problems. prepare(job, run_dir): what turns the composed config into the
    typed one (prepare_train for train); a sweep's jobs are validated as they run."""
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
    if prepare is None:
        from sftcli.config import parse_eval

        return Planned(parse_eval(job), directory, continues)
    return Planned(prepare(job, directory), directory, continues)


def prepare_train(cfg: Any, run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The typed config of a composed `sft train` job, validated once (before any model or data loads):
    what the launch environment decides goes in first (the world size of an external torchrun, resume=auto
    for a job that submitit requeued). overrides: the job's command line (a key given there is a choice)."""
    from omegaconf import open_dict

    from sftcli import cluster
    from sftcli.config import parse_train

    with open_dict(cfg):
        if cluster.torchrun_world_size() > 1:
            # Under an external torchrun the world size is torchrun's; record it so checks and resume see it.
            cfg.trainer.nproc = cluster.torchrun_world_size()
        if cfg.get("resume") is None and cluster.continues_requeued_job(run_dir):
            log.warning("submitit requeued this job: continuing from the newest checkpoint in %s", run_dir)
            cfg.resume = "auto"
    typed = parse_train(cfg, overrides)
    if typed.model.max_length == "auto":  # read from the model's files (torch is loaded for a run only)
        from sftcli.model import with_max_length

        typed = with_max_length(typed)
    return typed


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


@contextlib.contextmanager
def composing(command: str, overrides: list[str]) -> Iterator[None]:
    """Around a composition of the command's config: Hydra's errors become a ConfigError (exit 2)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(command, exc, overrides)) from None
    except ValueError as exc:  # Hydra's own check of a group's value (model=1, data=null)
        raise ConfigError(_group_value_message(overrides) or f"invalid overrides: {exc}") from None


def _group_value_message(overrides: list[str]) -> str | None:
    """`model=1`, `data=null`: a config group takes one of its options' names."""
    from sftcli.catalog import config_groups

    groups = config_groups()
    for arg in overrides:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in groups and value not in groups[key]:
            return f"{key}={value}: {key} takes the name of an option: {', '.join(groups[key])}"
    return None


def check_group_options(overrides: list[str]) -> None:
    """A config group given an option it does not have (model=nope): the ConfigError a composition would
    end in, found without composing (a sweep's jobs, sftcli's sweeper in hydra_plugins/sft_sweeper)."""
    from sftcli.catalog import config_groups

    for arg in overrides:
        key, sep, option = arg.lstrip("+~").partition("=")
        options = config_groups().get(key)
        if sep and options is not None and option not in options:
            raise ConfigError(_missing_option_message(key, option))


def _missing_option_message(group: str, option: str) -> str:
    from sftcli.catalog import config_groups

    options = config_groups().get(group, [])
    hint = difflib.get_close_matches(option, options, n=1)
    extra = f" (did you mean {group}={hint[0]}?)" if hint else ""
    return f"{group}={option}: no such option{extra}; options: {', '.join(options)}"


def composition_message(command: str, exc: BaseException, overrides: list[str]) -> str:
    """sft's message for a composition error of Hydra's, found from what the exception carries (the missing
    option, the key OmegaConf could not set) and from the overrides themselves; where neither tells, Hydra's
    own first line stands."""
    from hydra.errors import MissingConfigException


    missing = getattr(exc, "missing_cfg_file", None) if isinstance(exc, MissingConfigException) else None
    if missing and "/" in missing:
        return _missing_option_message(*missing.rsplit("/", 1))
    keys = [a.lstrip("~").partition("=")[0] for a in overrides if not a.startswith("+")]
    for key in keys:
        added = added_group_message(command, key, overrides)
        if added:
            return added
    twice = _group_chosen_twice(command, overrides)
    if twice:
        return (f"+{twice}=...: {twice} is already chosen (by +recipe=... or the defaults); "
                f"to pick another option write {twice}=OPTION, without the +")
    cause = exc.__cause__
    key = getattr(cause, "full_key", None) or None
    if key:
        from sftcli.config import RENAMED_KEYS, unknown_key_message

        return f"{key}: {unknown_key_message(key, None if key in RENAMED_KEYS else closest_key(command, key))}"
    return f"invalid overrides: {first_line(exc)}"


def _group_chosen_twice(command: str, overrides: list[str]) -> str | None:
    """The group that a `+group=option` adds although it is chosen already: by the command's defaults, by
    another `+group=`, or by the defaults list of another option on the command line (+recipe=self_training
    chooses a strategy)."""
    from sftcli.catalog import config_dir, config_groups
    from sftcli.helptext import read_yaml_doc

    groups = config_groups()
    picks = [(arg, group, option) for arg in overrides
             for group, sep, option in [arg.lstrip("+~").partition("=")] if sep and option in groups.get(group, [])]
    defaults = read_yaml_doc(config_dir() / f"{command}.yaml").defaults
    added = [group for arg, group, _ in picks if arg.startswith("+") and not arg.startswith("++")]
    for group in added:
        by_another = any(group in read_yaml_doc(config_dir() / other / f"{option}.yaml").defaults
                         for _, other, option in picks if other != group)
        if group in defaults or added.count(group) > 1 or by_another:
            return group
    return None


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
    """The known key most like `key` (for "did you mean"): every key of the command's schema, its groups'
    keys (strategy's too, chosen or not) and the aliases (lambda, tau)."""
    from sftcli.config.schema import COMMAND_SCHEMAS
    from sftcli.config.store import key_descriptions

    keys = list(key_descriptions(COMMAND_SCHEMAS[command]))
    hint = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return hint[0] if hint else None
