"""Hydra's base config of every group and command, generated from the schema and registered in Hydra's
ConfigStore, so that every key is known to Hydra (trainer.max_steps=5 overrides without a `+`) while the
YAML files under configs/ hold presets only.

Each group's option files open their defaults list with `schema` (the group's entry here; `schema@strategy`
in the strategy files, whose package is global), and train.yaml / eval.yaml with `train_schema` /
`eval_schema` (the top-level keys). The nodes are plain data: pydantic, not OmegaConf, checks the types.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sftcli.config.schema import ALIASES, COMMAND_SCHEMAS, TrainConfig

_MISSING = "???"  # Hydra's mark: the command line must give this key


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def group_models(cls: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """{field name: model} of the groups of a command's schema (`X | None` groups included)."""
    out = {}
    for name, info in cls.model_fields.items():
        args = getattr(info.annotation, "__args__", None) or (info.annotation,)
        models = [a for a in args if _is_group(a)]
        if models:
            out[name] = models[0]
    return out


def defaults_of(cls: type[BaseModel], skip_groups: bool = True) -> dict[str, Any]:
    """Every leaf key of `cls` with its default (`???` for a key without one), groups left out."""
    out: dict[str, Any] = {}
    groups = group_models(cls)
    for name, info in cls.model_fields.items():
        if skip_groups and name in groups:
            continue
        out[name] = _MISSING if info.default is PydanticUndefined and info.default_factory is None \
            else info.get_default(call_default_factory=True)
    return out


def base_nodes() -> dict[tuple[str | None, str], dict[str, Any]]:
    """{(group, name): node} of every base config: one per group, one per command's top-level keys."""
    nodes: dict[tuple[str | None, str], dict[str, Any]] = {}
    for command, cls in COMMAND_SCHEMAS.items():
        top = defaults_of(cls)
        if cls is TrainConfig:
            # `lambda` and `tau` are typed at the top level and read by loss.weight/tau (ALIASES).
            for alias, path in ALIASES.items():
                group, field = path.split(".")
                top[alias] = defaults_of(group_models(TrainConfig)[group])[field]
        nodes[(None, f"{command}_schema")] = top
        for name, model in group_models(cls).items():
            nodes[(name, "schema")] = defaults_of(model)
    return nodes


@functools.cache
def register() -> None:
    """Register the base configs with Hydra's ConfigStore (once per process: cached; before any compose)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in base_nodes().items():
        store.store(group=group, name=name, node=node)


def group_keys(command: str, group: str) -> list[str]:
    """The keys of a group of a Hydra command (strategy: name, labeled_steps), also when the command line
    has not chosen one; [] for a group without keys of its own (recipe) or an unknown command."""
    cls = COMMAND_SCHEMAS.get(command)
    model = group_models(cls).get(group) if cls else None
    return list(model.model_fields) if model else []


def field_help(cls: type[BaseModel]) -> list[tuple[str, Any, Any, str, bool]]:
    """(name, annotation, default, meaning, required) of each field of a config model, in order."""
    out = []
    for name, info in cls.model_fields.items():
        required = info.default is PydanticUndefined and info.default_factory is None
        out.append((name, info.annotation, None if required else info.get_default(call_default_factory=True),
                    info.description or "", required))
    return out


def key_descriptions(cls: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """{dotted key: one-line meaning} of every key of a schema, groups and their keys included; for
    TrainConfig also the top-level aliases (lambda, tau), which mean what the field they feed means."""
    out: dict[str, str] = {}
    groups = group_models(cls)
    for name, info in cls.model_fields.items():
        out[prefix + name] = info.description or ""
        if name in groups:
            out.update(key_descriptions(groups[name], f"{prefix}{name}."))
    if cls is TrainConfig and not prefix:
        out.update({alias: out[path] for alias, path in ALIASES.items()})
    return out
