"""The JSON files sft writes and reads back (a checkpoint's manifest.json and sft_state.json, a run's
summary.json, a model directory's config.json), read through one function: a file that is missing its
parts, is not JSON, or is JSON of the wrong shape is a user error naming the file and the field, never a
KeyError or an AttributeError deep inside a command. Only the fields sft reads are declared; the rest of
each file passes through untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftcli.errors import CheckpointError, UserError


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class ManifestEntry(_Record):
    size: int = Field(ge=0)
    sha256: str = Field(min_length=64, max_length=64)


class Manifest(_Record):
    files: dict[str, ManifestEntry]


class SftState(_Record):
    step: int = Field(ge=0)
    config: dict[str, Any]


class ClassPrior(_Record):
    folded: bool = False
    shift: list[float] | None = None


class Summary(_Record):
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    class_prior: ClassPrior | None = None


class ModelConfigFile(_Record):
    """What sft reads of a model directory's config.json before transformers does."""

    model_type: str | None = None
    auto_map: dict[str, Any] | None = None


R = TypeVar("R", bound=BaseModel)


def read_json(path: Path, error: type[UserError] = CheckpointError) -> Any:
    """The JSON value of `path`; `error` naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path} is damaged: not valid JSON ({exc})") from None


def read_record(path: Path, record: type[R], error: type[UserError] = CheckpointError) -> R:
    """`path` read as `record`: the JSON and the fields sft reads checked; `error` names the file and field."""
    return _validated(read_json(path, error), path, record, error)


def read_checked(path: Path, record: type[BaseModel], error: type[UserError] = CheckpointError) -> Any:
    """`path`'s JSON as it is (every field, as written), once its shape is checked against `record`."""
    data = read_json(path, error)
    _validated(data, path, record, error)
    return data


def _validated(data: Any, path: Path, record: type[R], error: type[UserError]) -> R:
    try:
        return record.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the whole file"
        raise error(f"{path} is damaged: {where}: {first['msg']} (got {_short(first.get('input'))})") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
