"""One definition of every key: its default and meaning live in sftcli/config/schema.py only; the YAML
files under configs/ hold presets (values that differ from the schema's defaults), each with a comment."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sftcli import helptext
from sftcli.cli import config_dir
from sftcli.config import ALIASES, EvalConfig, PredictConfig, TrainConfig, parse_train
from sftcli.config.store import base_nodes, defaults_of, group_models, key_descriptions
from sftcli.errors import ConfigError


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _schema_default(key: str) -> Any:
    """The schema's default of a dotted `sft train` key (lambda and tau: of the field they feed)."""
    *groups, leaf = ALIASES.get(key, key).split(".")
    cls: Any = TrainConfig
    for g in groups:
        cls = group_models(cls)[g]
    return defaults_of(cls)[leaf]


def _preset_files() -> list[tuple[str, str, Any, str]]:
    """(file, dotted key in the command's config, value, its comment) of every value the YAML files set (defaults lists and
    Hydra's own section aside)."""
    out = []
    root = config_dir()
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if rel.parts[0] == "hydra":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        data.pop("defaults", None)
        data.pop("hydra", None)
        doc = helptext.read_yaml_doc(path)
        prefix = "" if len(rel.parts) == 1 or doc.package == "_global_" else f"{rel.parts[0]}."
        out += [(str(rel), prefix + key, value, doc.comments.get(key, "")) for key, value in _leaves(data)]
    return out


PRESETS = _preset_files()


def test_the_yaml_files_hold_presets() -> None:
    keys = {(f, k) for f, k, _, _ in PRESETS}
    assert {("model/tiny.yaml", "model.source"), ("strategy/mix.yaml", "strategy.name"), ("strategy/mix.yaml", "lambda"),
            ("recipe/self_training.yaml", "trainer.max_steps"), ("loss/infonce.yaml", "loss.weight")} <= keys
    # A value equal to the schema's default would be a second definition of it. A recipe records a
    # measured setting in full, so a later change of a default does not change the recipe.
    same = [(f, k, v) for f, k, v, _ in PRESETS if not f.startswith("recipe/")
            and v == (defaults_of(EvalConfig)[k] if f == "eval.yaml" else _schema_default(k))]
    assert not same, same


def test_every_preset_value_has_a_one_line_comment() -> None:
    assert not [(f, k) for f, k, _, comment in PRESETS if not comment]


def test_every_yaml_file_opens_with_the_command_that_uses_it() -> None:
    for path in config_dir().rglob("*.yaml"):
        if "hydra" not in path.relative_to(config_dir()).parts:
            assert "sft " in helptext.read_yaml_doc(path).header, path


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig, PredictConfig], ids=lambda c: c.__name__)
def test_every_key_has_a_description(cls) -> None:
    descriptions = key_descriptions(cls)
    assert len(descriptions) > (90 if cls is TrainConfig else 5)
    assert not [k for k, d in descriptions.items() if not d or "\n" in d]


def test_hydra_knows_every_key_with_the_schemas_default() -> None:
    nodes = base_nodes()
    assert nodes[("trainer", "schema")]["max_steps"] == 150
    assert nodes[("strategy", "schema")] == {"name": "???", "labeled_steps": 1, "unlabeled": "required"}  # the option names it
    data, _ = helptext.compose("train", ["+strategy=alternate"])
    composed = dict(_leaves(data))
    for key in key_descriptions(TrainConfig):
        if key not in ("model", "data", "loss", "optim", "trainer", "strategy"):
            assert key in composed, key
    assert composed["trainer.max_steps"] == 150 and composed["strategy.labeled_steps"] == 1


def test_a_saved_config_is_not_judged_by_what_changed_since(tmp_path) -> None:
    from sftcli.config import from_plain, to_plain

    gone = tmp_path / "gone"
    gone.mkdir()
    raw = TrainConfig().model_dump()
    raw["resume"] = str(gone)
    cfg = parse_train(raw)
    gone.rmdir()
    assert from_plain(to_plain(cfg)).resume == str(gone)
    with pytest.raises(ConfigError, match="resume: path"):
        parse_train(raw)


def test_problems_of_several_objectives_keys_are_reported_together() -> None:
    # The loss group is assembled from each objective's keys; its checks still run as one.
    with pytest.raises(ConfigError) as refused:
        parse_train({"loss": {"self_training_teachers": 2, "class_weights": {"a": -1.0}}})
    assert "2 problem(s)" in str(refused.value)
    assert "loss.class_weights" in str(refused.value) and "loss.self_training_teachers" in str(refused.value)
