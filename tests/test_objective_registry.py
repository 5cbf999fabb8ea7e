"""A new objective is its module, its keys beside it (a light module: the config and `--help` read them
without torch) and one registry line: a toy objective added that way gets its key in the schema, `--help`
and validation, trains as a term of the loss, and is logged and recorded, with no file of sft touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from conftest import TINY, read_jsonl

TOY_KEYS = '''
from sftcli.fields import ObjectiveKeys, key


class ToyKeys(ObjectiveKeys):
    toy_weight: float = key(0.0, "weight of the toy term: the mean squared logit of the labeled texts", ge=0)
'''

TOY = '''
from sftcli.engine.steps import Contribution, StepView, Term
from sftcli.objectives.base import BuildContext, Objective


class Toy(Objective):
    name = "toy"

    def __init__(self, weight: float):
        self.weight = weight

    def contribute(self, view: StepView) -> Contribution:
        if not view.batch.has_labeled:
            return Contribution()
        return Contribution(terms=[Term("toy", view.labeled_logits.float().pow(2).mean(), self.weight)])


def build(ctx: BuildContext) -> Toy | None:
    return Toy(ctx.cfg.loss.toy_weight) if ctx.cfg.loss.toy_weight > 0 else None
'''

# The one registry line, added before sft reads its config.
RUN = '''
import sys

from sftcli.objectives import registry
from toy_keys import ToyKeys

registry.OBJECTIVES.append(registry.Entry("toy", "toy penalty", ToyKeys, "toy_objective"))

from sftcli.cli import main

main(sys.argv[1:])
'''


def _sft_with_toy(tmp_path: Path, cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "toy_keys.py").write_text(textwrap.dedent(TOY_KEYS))
    (tmp_path / "toy_objective.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "run_with_toy.py").write_text(textwrap.dedent(RUN))
    env = {"OMP_NUM_THREADS": "1", **os.environ, "SFT_CACHE_DIR": str(cache_dir), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    env.pop("SFT_DEBUG", None)
    return subprocess.run([sys.executable, str(tmp_path / "run_with_toy.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_toy_objective_added_by_its_modules_and_one_registry_line_trains(tmp_path, cache_dir) -> None:
    help_page = _sft_with_toy(tmp_path, cache_dir, "train", "--help")
    assert help_page.returncode == 0, help_page.stderr
    assert "loss.toy_weight=0.0" in help_page.stdout and "mean squared logit" in help_page.stdout

    bad = _sft_with_toy(tmp_path, cache_dir, "train", *TINY, "loss.toy_weight=-1", "run_name=bad")
    assert bad.returncode == 2 and "loss.toy_weight" in bad.stderr, bad.stderr
    assert not (tmp_path / "runs" / "bad").exists()

    done = _sft_with_toy(tmp_path, cache_dir, "train", *TINY, "loss.toy_weight=0.5", "run_name=toy")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "toy"
    logged = [e for e in read_jsonl(run / "metrics.jsonl") if "train/loss_toy" in e]
    assert len(logged) == 4 and all(e["train/loss_toy"] > 0 for e in logged)
    # The step's loss is the weighted sum of its terms: the toy term is in it.
    for e in logged:
        assert abs(e["train/loss"] - (e["train/loss_sup"] + 0.5 * e["train/loss_toy"])) < 1e-4 * abs(e["train/loss"])
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["toy_weight"] == 0.5
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
