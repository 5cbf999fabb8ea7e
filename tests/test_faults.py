"""The test hooks of sftcli.faults: parsed once from SFT_TEST_* variables, no environment read per call,
and each hook acting only where it was asked for."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sftcli import faults
from sftcli.faults import AtStep, Hooks, NanAt, SavePause


@pytest.fixture
def restore_hooks() -> Iterator[None]:
    old = faults.install(faults.hooks())
    try:
        yield
    finally:
        faults.install(old)


def test_variables_parse_into_hooks() -> None:
    env = {
        "SFT_TEST_SIGNAL_AT_STEP": "3:1",
        "SFT_TEST_KILL_AT_STEP": "6",
        "SFT_TEST_NAN_AT_STEP": "2+:sup",
        "SFT_TEST_SAVE_PAUSE": "rename:120:4",
        "SFT_TEST_SAVE_PAUSE_MARKER": "/tmp/marker",
        "SFT_TEST_DISK_FULL_AT_SAVE": "4",
        "SFT_TEST_DISK_FREE": "1048576",
        "SFT_TEST_RECORD_IDS": "/tmp/ids.jsonl",
    }
    assert Hooks.from_environ(env) == Hooks(
        signal_at_step=AtStep(3, 1),
        kill_at_step=AtStep(6, None),
        nan_at_step=NanAt(2, True, "sup"),
        save_pause=SavePause("rename", 120.0, 4, "/tmp/marker"),
        disk_full_at_save=4,
        disk_free=1048576,
        record_ids="/tmp/ids.jsonl",
    )
    assert Hooks.from_environ({"SFT_TEST_NAN_AT_STEP": "3", "SFT_TEST_SAVE_PAUSE": "files:0.5"}) == Hooks(
        nan_at_step=NanAt(3, False, "con"), save_pause=SavePause("files", 0.5, None, None))
    # Unset and empty are the same: no hook.
    assert Hooks.from_environ({}) == Hooks.from_environ({k: "" for k in env}) == Hooks()


class _NoEnviron(dict):
    """An os.environ stand-in that fails any read."""

    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"os.environ[{key!r}] read")

    def get(self, key: str, default: object = None) -> str:
        raise AssertionError(f"os.environ.get({key!r}) read")

    def __contains__(self, key: object) -> bool:
        raise AssertionError(f"{key!r} in os.environ")


def test_without_hooks_the_step_calls_are_no_ops_that_read_no_environment(restore_hooks, monkeypatch,
                                                                          tmp_path: Path) -> None:
    faults.install(Hooks())
    monkeypatch.setattr(os, "environ", _NoEnviron())
    value = torch.tensor(1.5)
    for step in range(1, 5):
        faults.at_step_start(step, 0)
        assert faults.poison("con", value, step) is value
        faults.save_pause("files", step)
        faults.disk_full_at_save(step)
        faults.record_batch(step, "labeled", np.arange(3))
    monkeypatch.undo()
    assert faults.disk_free(tmp_path) > 0
    assert list(tmp_path.iterdir()) == []


def test_installed_hooks_act_where_asked(restore_hooks, tmp_path: Path) -> None:
    marker, ids = tmp_path / "marker", tmp_path / "ids.jsonl"
    faults.install(Hooks(nan_at_step=NanAt(3, True, "con"), save_pause=SavePause("manifest", 0.0, 2, str(marker)),
                         disk_full_at_save=4, disk_free=123, record_ids=str(ids)))
    value = torch.tensor(1.0)
    assert [bool(faults.poison("con", value, s).isnan()) for s in range(1, 6)] == [False, False, True, True, True]
    assert not faults.poison("sup", value, 3).isnan()
    faults.save_pause("manifest", 1)
    faults.save_pause("rename", 2)
    assert not marker.exists()
    faults.save_pause("manifest", 2)
    assert marker.read_text() == "manifest"
    faults.disk_full_at_save(3)
    with pytest.raises(OSError) as exc:
        faults.disk_full_at_save(4)
    assert exc.value.errno == errno.ENOSPC
    assert faults.disk_free(tmp_path) == 123
    faults.record_batch(7, "unlabeled", np.array([4, 2]))
    assert [json.loads(line) for line in ids.read_text().splitlines()] == [
        {"step": 7, "stream": "unlabeled", "ids": [4, 2]}]
    assert AtStep(3, 1).matches(3, 1) and not AtStep(3, 1).matches(3, 0) and AtStep(3).matches(3, 5)


def test_the_environment_is_read_once_at_import(tmp_path: Path) -> None:
    # Changing the variable after the import changes nothing: the hooks were fixed at process start.
    code = ("import os, pathlib\n"
            "from sftcli import faults\n"
            "os.environ['SFT_TEST_DISK_FREE'] = '7'\n"
            "print(faults.disk_free(pathlib.Path('.')))\n")
    env = {**os.environ, "SFT_TEST_DISK_FREE": "5", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "5"
