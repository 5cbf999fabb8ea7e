"""A value of the wrong type on any key of the train schema: exit 2 naming the key, never a traceback.

The keys come from the pydantic models in sftcli/config/schema.py, so a key added there is covered here without
editing this file. Each case goes through parse_train, the function `sft train` validates with; a few
go through the real CLI as well.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import pytest
from conftest import TINY
from pydantic import BaseModel

from sftcli.config import TrainConfig, parse_train
from sftcli.errors import EXIT_USER_ERROR, ConfigError


def schema_keys(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, annotation) of every field, groups included, recursively."""
    out = []
    for name, info in cls.model_fields.items():
        tp, key = info.annotation, prefix + name
        out.append((key, tp))
        inner = _without_none(tp)
        if _is_group(inner):
            out += schema_keys(inner, key + ".")
    return out


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _without_none(tp: Any) -> Any:
    """`X | None` -> X; a union of several types (loss.class_weights: 'balanced' | {label: weight}) stays one."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else Union[tuple(inner)]  # noqa: UP007 - built from a list
    return tp


def wrong_value(tp: Any) -> Any:
    """A value the annotation does not admit: text for numbers and flags, a number for a choice, a list
    for text (numbers are valid text: run_name=123), a plain value for a group of keys."""
    tp = _without_none(tp)
    if hasattr(tp, "__metadata__"):  # Annotated[str, ...] (numbers are taken as text)
        tp = tp.__origin__
    if typing.get_origin(tp) is Literal:
        return 123
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [getattr(a, "__origin__", a) if hasattr(a, "__metadata__") else a for a in typing.get_args(tp)]
        if str in members:  # a text or a list of texts (data.train): a mapping is neither
            assert all(a is str or typing.get_origin(a) is list for a in members), tp
            return {"a": 1}
        if int in members:  # a number or a choice (model.max_length: 128 | 'auto'): text that is neither
            assert all(a is int or typing.get_origin(a) is Literal for a in members), tp
            return "abc"
        # choices and a mapping: a number is neither
        assert all(typing.get_origin(a) in (Literal, dict) for a in members), tp
        return 123
    if _is_group(tp):
        return 5
    if tp is str:
        return ["a", "b"]
    if typing.get_origin(tp) is list:  # a list of names (trainer.report_to): a mapping is none
        return {"a": 1}
    assert tp in (bool, int, float), tp
    return "abc"


def _base() -> dict[str, Any]:
    """The composed config of `sft train model=tiny +strategy=mix` as plain data (strategy keys present)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sftcli.cli import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
        cfg = compose(config_name="train", overrides=["model=tiny", "+strategy=mix"])
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return data


BASE = _base()
KEYS = schema_keys(TrainConfig)


def test_the_schema_walk_sees_every_group() -> None:
    keys = {k for k, _ in KEYS}
    assert {"seed", "model", "model.max_length", "strategy.name", "trainer.batch_size", "data.unlabeled",
            "loss.self_training_every", "optim.lr"} <= keys
    assert len(keys) > 90


@pytest.mark.parametrize("key,tp", KEYS, ids=[k for k, _ in KEYS])
def test_a_wrong_type_on_any_key_is_one_clear_error(key, tp) -> None:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    value = wrong_value(tp)
    node[leaf] = value
    with pytest.raises(ConfigError) as info:  # any other exception is a traceback for the user
        parse_train(raw)
    message = str(info.value)
    assert info.value.exit_code == EXIT_USER_ERROR
    assert f"- {key}: " in message or f"({key}): " in message, message
    # Only that key: a wrong value never reaches the checks that combine keys.
    assert "(1 problem(s))" in message, message


@pytest.mark.parametrize("override,key", [
    (["trainer.batch_size=abc"], "trainer.batch_size: expected int, got 'abc'"),
    (["trainer.precision=16"], "trainer.precision: got 16, expected one of"),
    (["+strategy=mix", "lambda=abc"], "lambda (loss.weight): expected float or null, got 'abc'"),
    (["+strategy=alternate", "strategy.labeled_steps=x"], "strategy.labeled_steps: expected int"),
    (["run_name=[a,b]"], "run_name: expected str"),
    (["data.labels_per_class=many"], "data.labels_per_class: expected int or null"),
])
def test_wrong_types_through_the_cli(sft, tmp_path, override, key) -> None:
    proc = sft("train", *TINY, *override)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
