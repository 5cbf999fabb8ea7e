"""From a composed config (Hydra's, or a dict) to a typed one, and every problem as `dotted.key: message`.

pydantic validates against sftcli/config/schema.py; this module only turns its errors (a `loc` tuple and
an error type each) into the lines a user reads, all problems at once, and raises ConfigError (exit 2).
"""

from __future__ import annotations

import difflib
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from sftcli.config.schema import ALIASES, EvalConfig, ExportConfig, PredictConfig, SelectConfig, TrainConfig
from sftcli.errors import ConfigError

# Problems with the fields behind `lambda` and `tau` name the key the user typed; a type error shows both.
_ALIAS_OF = {path: alias for alias, path in ALIASES.items()}

# Keys that were renamed: a config or command line still using the old name is told the new one
# instead of a spelling guess.
RENAMED_KEYS = {"loss.consistency_mask_prob": "loss.unlabeled_mask_prob"}
# Keys that were removed, and why: a config or command line still setting one is told so. A saved config
# (a checkpoint's, read by from_plain) that holds one still loads: the key no longer changes anything.
_BELOW_3_PERCENT = "measured below 3% (docs/benchmark.md)"
REMOVED_KEYS = {"trainer.embedding_grad_rows": _BELOW_3_PERCENT, "trainer.cpu_dropout": _BELOW_3_PERCENT,
                "optim.fused_clipping": _BELOW_3_PERCENT}

_MISSING = "???"  # Hydra's mark of a key without a value


def unknown_key_message(key: str, guess: str | None) -> str:
    """The error text for an unknown key: why it was removed, its new name when it was renamed, else the
    closest known key."""
    if key in REMOVED_KEYS:
        return f"removed: {REMOVED_KEYS[key]}"
    if key in RENAMED_KEYS:
        return f"unknown key (renamed to {RENAMED_KEYS[key]!r})"
    return f"unknown key (did you mean {guess!r}?)" if guess else "unknown key"


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_text(tp: Any) -> str:
    """A field's annotation as a user reads it: `int`, `'auto' | 'cpu' | 'cuda'`, `str or null`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_text(a) for a in get_args(tp))
    if origin is dict:  # as typed on the command line: {spam:3,ham:1}
        k, v = get_args(tp)
        return f"{{{type_text(k)}: {type_text(v)}}}"
    if hasattr(tp, "__metadata__"):  # Annotated[str, ...]: the str
        return type_text(tp.__origin__)
    return getattr(tp, "__name__", str(tp))


def _locate(cls: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], FieldInfo | None, type | None]:
    """The field names along a pydantic `loc` (union and validator tags dropped), the last one's FieldInfo,
    and the model that holds it."""
    names: list[str] = []
    info: FieldInfo | None = None
    owner: type | None = cls
    current: Any = cls
    for part in loc:
        if not isinstance(part, str) or not _is_model(current) or "[" in part:
            continue  # a list index, or pydantic's tag of a union member or validator
        owner = current
        if part in current.model_fields:
            info = current.model_fields[part]
            current = _without_none(info.annotation)
        else:  # an unknown key (extra_forbidden)
            info, current = None, None
        names.append(part)
    return names, info, owner


def _limits_of(info: FieldInfo) -> list[Any]:
    """The limit objects of a field: its own, and those of a union member's Annotated (`int >= 8 | 'auto'`)."""
    found = list(info.metadata)
    for member in get_args(info.annotation):
        for m in getattr(member, "__metadata__", ()):
            found.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return found


def _limit_text(info: FieldInfo) -> str:
    lo = hi = None
    for m in _limits_of(info):
        for attr, sign in (("ge", "["), ("gt", "(")):
            if getattr(m, attr, None) is not None:
                lo = (sign, getattr(m, attr))
        for attr, sign in (("le", "]"), ("lt", ")")):
            if getattr(m, attr, None) is not None:
                hi = (sign, getattr(m, attr))
    if lo and hi:
        text = f"must be in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    elif lo:
        text = f"must be {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    elif hi:
        text = f"must be {'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    else:  # pragma: no cover - a limit error on a field without limits
        text = "is out of range"
    if type(None) in get_args(info.annotation):
        text += " or null"
    extra = info.json_schema_extra
    if isinstance(extra, dict) and extra.get("note"):
        text += f" ({extra['note']})"
    return text


_LIMITS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _messages(cls: type[BaseModel], exc: ValidationError, command: str) -> list[str]:
    out: list[str] = []
    typed: set[str] = set()  # keys whose type error is told: a union (loss.class_weights) errs once per member
    for error in exc.errors(include_url=False):
        kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
        names, info, owner = _locate(cls, loc)
        key = ".".join(names)
        prefix = ".".join(names[:-1])
        if kind == "sft_checks":  # a model's cross-field checks: keys relative to that model
            for sub, message in error["ctx"]["problems"]:
                full = f"{key}.{sub}" if key else sub
                out.append(f"{_ALIAS_OF.get(full, full)}: {message}")
        elif kind == "extra_forbidden":
            known = list(owner.model_fields) if _is_model(owner) else []
            hint = difflib.get_close_matches(names[-1], known, n=1, cutoff=0.6)
            guess = (f"{prefix}." if prefix else "") + hint[0] if hint else None
            out.append(f"{key}: {unknown_key_message(key, guess)}")
        elif kind == "missing":
            usage = f": sft {command} {key}=PATH" if command in ("eval", "predict") else " but missing"
            out.append(f"{key}: is required{usage}")
        elif kind in _LIMITS and info is not None:
            # In a union (model.max_length: a number or 'auto') the number's limit is what the user missed.
            out = [line for line in out if not line.startswith(f"{key}: expected")]
            typed.add(key)
            out.append(f"{_ALIAS_OF.get(key, key)}: {_limit_text(info)}")
        elif kind == "finite_number":
            # In a union (loss.class_weights) the other members' type errors say less: this one stands.
            out = [line for line in out if not line.startswith(f"{key}: expected")]
            typed.add(key)
            out.append(f"{_ALIAS_OF.get(key, key)}: must be a finite number, got {value!r}")
        elif kind == "int_too_large":
            out.append(f"{_ALIAS_OF.get(key, key)}: {error['msg']}, got {value!r}")
        elif kind == "string_too_short":
            out.append(f"{key}: must not be empty")
        elif info is not None:
            if key in typed:
                continue
            typed.add(key)
            shown = f"{_ALIAS_OF[key]} ({key})" if key in _ALIAS_OF else key
            tp = info.annotation
            inner = _without_none(tp)
            if get_origin(inner) is Literal:
                choices = [str(a) for a in get_args(inner)]
                hint = difflib.get_close_matches(str(value), choices, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                out.append(f"{shown}: got {value!r}, expected one of {type_text(tp)}{extra}")
            elif _is_model(inner):
                out.append(f"{shown}: expected a group of keys, got {value!r}")
            else:
                # A union with choices among its members ('balanced' | {label: weight}): still a hint.
                choices = [str(c) for a in get_args(inner) if get_origin(a) is Literal for c in get_args(a)]
                hint = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                out.append(f"{shown}: expected {type_text(tp)}, got {value!r} ({type(value).__name__}){extra}")
        else:
            out.append(f"{key or 'config'}: {error['msg']}")
    return out


def _to_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        try:
            data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as exc:  # interpolation errors name the key themselves
            raise ConfigError(f"config could not be resolved: {exc}") from exc
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    assert isinstance(data, dict)
    return data


def _drop_missing(data: dict[str, Any]) -> dict[str, Any]:
    """`???` values removed: a required key is then reported as missing, an optional one takes its
    default and the model's own checks say when it is needed (model.name_or_path with model=hf)."""
    return {k: _drop_missing(v) if isinstance(v, dict) else v for k, v in data.items() if v != _MISSING}


def validate(cls: type[BaseModel], data: dict[str, Any], command: str, *, saved: bool = False,
             given: frozenset[str] = frozenset()) -> Any:
    """`data` validated as `cls`, or ConfigError listing every problem. `given`: the keys the command line
    set (for checks that tell a default from a choice)."""
    try:
        return cls.model_validate(_drop_missing(data), context={"saved": saved, "given": given})
    except ValidationError as exc:
        problems = _messages(cls, exc, command)
    lines = "\n".join(f"  - {m}" for m in problems)
    raise ConfigError(f"invalid {'saved' if saved else command} config ({len(problems)} problem(s)):\n{lines}")


def given_keys(overrides: list[str]) -> frozenset[str]:
    """The dotted keys (and groups) that command-line overrides set, parsed by Hydra's own grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return frozenset(o.key_or_group for o in OverridesParser.create().parse_overrides(overrides))


def parse_train(cfg: Any, overrides: list[str] | None = None) -> TrainConfig:
    """Validate a composed `sft train` config; raise ConfigError listing every problem. `overrides`: the
    command line that composed it, where known (a key given there is a choice, not a default)."""
    raw = _to_dict(cfg)
    for alias in ALIASES:  # read through loss.weight / loss.tau (configs/loss/infonce.yaml)
        raw.pop(alias, None)
    return validate(TrainConfig, raw, "train", given=given_keys(overrides or []))


def parse_eval(cfg: Any) -> EvalConfig:
    return validate(EvalConfig, _to_dict(cfg), "eval")


def parse_predict(raw: dict[str, Any]) -> PredictConfig:
    return validate(PredictConfig, raw, "predict")


def parse_export(raw: dict[str, Any]) -> ExportConfig:
    return validate(ExportConfig, raw, "export")


def parse_select(raw: dict[str, Any]) -> SelectConfig:
    return validate(SelectConfig, raw, "select")


def to_plain(obj: BaseModel, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """A typed config back to plain data (for config.yaml and checkpoints), with `resolved` (dotted key ->
    value) set to what only the run resolves (its plan: the steps of trainer.epochs, a round's length)."""
    plain = obj.model_dump()
    for key, value in (resolved or {}).items():
        section, _, name = key.rpartition(".")
        node = plain
        for part in section.split(".") if section else []:
            node = node[part]
        node[name] = value
    return plain


def to_record(cfg: TrainConfig, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's config.yaml: the typed config as the command line composes it and the run resolved it (see
    to_plain), with `lambda` and `tau` at the top level (ALIASES) and no `strategy` when there is none."""
    record = to_plain(cfg, resolved)
    if record.get("strategy") is None:
        record.pop("strategy", None)
    for alias, path in ALIASES.items():
        section, name = path.split(".")
        record[alias] = record[section][name]
    return record


def from_plain(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from :func:`to_plain` output (worker processes, checkpoints)."""
    data = {**data}
    for key in REMOVED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            data[section] = {k: v for k, v in data[section].items() if k != name}
    return validate(TrainConfig, data, "saved", saved=True)
