"""A command never removes, and never writes into, a directory it did not create (except a run it continues
with resume=): RELIABILITY.md H.21, through the real CLI on the tiny model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import TINY

from sftcli.rundir import Claim, claim


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root: its path and the sha256 of a file's bytes ("dir" for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


MISSING = ["data=files", "data.train=/nonexistent/train.csv"]


def test_a_refused_run_keeps_a_folder_that_was_there(forked, tmp_path) -> None:
    kept = tmp_path / "R" / "precious"
    kept.mkdir(parents=True)
    (kept / "keep.txt").write_text("data")
    before = snapshot(tmp_path / "R")
    proc = forked("train", "model=tiny", "run_root=R", "run_name=precious", *MISSING, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path / "R") == before
    assert "resume=auto" in proc.stderr and "run_name" in proc.stderr


def test_a_new_run_never_overwrites_a_finished_one(forked, tmp_path) -> None:
    assert forked("train", *TINY, "run_root=R", "run_name=done", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "R")
    again = forked("train", *TINY, "trainer.max_steps=6", "seed=3", "run_root=R", "run_name=done", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists and is not empty" in again.stderr and "resume=auto" in again.stderr
    # A refused run with another fault (a missing data file) does not rewrite config.yaml either.
    refused = forked("train", *TINY, "run_root=R", "run_name=done", *MISSING, cwd=tmp_path)
    assert refused.returncode == 2
    assert snapshot(tmp_path / "R") == before


def test_a_refused_run_removes_only_the_folders_it_made(forked, tmp_path) -> None:
    (tmp_path / "Y").mkdir()
    (tmp_path / "Y" / "other.txt").write_text("x")
    before = snapshot(tmp_path)
    proc = forked("train", "model=tiny", *MISSING, "hydra.run.dir=Y/deep/a/b", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert snapshot(tmp_path) == before  # Y/deep, Y/deep/a, Y/deep/a/b: made by the command, gone again
    proc = forked("train", "model=tiny", *MISSING, "run_root=fresh/runs", cwd=tmp_path)
    assert proc.returncode == 2
    assert not (tmp_path / "fresh").exists()


def test_an_empty_folder_that_was_there_stays_there_and_empty(forked, tmp_path) -> None:
    (tmp_path / "R" / "empty").mkdir(parents=True)
    proc = forked("train", "model=tiny", "run_root=R", "run_name=empty", *MISSING, cwd=tmp_path)
    assert proc.returncode == 2
    assert (tmp_path / "R" / "empty").is_dir() and not any((tmp_path / "R" / "empty").iterdir())


def test_eval_keeps_an_eval_folder_that_was_there(forked, tmp_path) -> None:
    assert forked("train", *TINY, "run_root=R", "run_name=r", cwd=tmp_path).returncode == 0
    kept = tmp_path / "R" / "eval" / "mine"
    kept.mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "R")
    # Refused for its checkpoint, then for the folder: either way nothing there changes.
    assert forked("eval", "checkpoint=R/nothing", "run_root=R", "run_name=mine", cwd=tmp_path).returncode == 2
    proc = forked("eval", "checkpoint=R/r", "run_root=R", "run_name=mine", cwd=tmp_path)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert snapshot(tmp_path / "R") == before
    # A refused evaluation under a new name leaves no folder.
    broken = tmp_path / "R" / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{}")
    assert forked("eval", f"checkpoint={broken}", "run_root=R", "run_name=new", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "R" / "eval" / "new").exists()


def test_a_sweep_never_writes_into_a_sweep_dir_that_holds_something(forked, tmp_path) -> None:
    sweep = tmp_path / "S"
    sweep.mkdir()
    (sweep / "results.csv").write_text("a,b\n")
    before = snapshot(tmp_path)
    proc = forked("train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.sweep.dir" in proc.stderr
    assert snapshot(tmp_path) == before


def test_resume_auto_continues_in_the_named_run(sft, tmp_path) -> None:
    # A fresh process: the SFT_TEST_* fault hooks are read when sftcli.faults is imported.
    first = sft("train", *TINY, "run_root=R", "run_name=r", env={"SFT_TEST_SIGNAL_AT_STEP": "3"})
    assert first.returncode == 75, first.stderr
    proc = sft("train", *TINY, "run_root=R", "run_name=r", "resume=auto")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "R" / "r" / "checkpoints" / "step-000004").is_dir()


def test_claim_release_removes_what_it_made_and_nothing_else(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    c: Claim = claim(tmp_path / "a" / "b" / "c", continues=False, what="run", keys="k", hint="")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_text("x")
    (tmp_path / "a" / "keep").write_text("y")
    c.release(tmp_path / "a" / "b" / "c")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep"]
    # Something else went into a folder the command made: that folder stays, with it.
    c = claim(tmp_path / "n" / "run", continues=False, what="run", keys="k", hint="")
    (tmp_path / "n" / "run").mkdir(parents=True)
    (tmp_path / "n" / "neighbour").mkdir()
    c.release(tmp_path / "n" / "run")
    assert [p.name for p in (tmp_path / "n").iterdir()] == ["neighbour"]


@pytest.mark.parametrize("bad", ["file", "long"])
def test_a_run_root_that_cannot_hold_folders_is_exit_2(forked, tmp_path, bad) -> None:
    (tmp_path / "plain").write_text("a file")
    before = snapshot(tmp_path)
    arg = "run_root=plain" if bad == "file" else f"run_name={'x' * 300}"
    proc = forked("train", "model=tiny", arg, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and ("run_root" in proc.stderr or "run_name" in proc.stderr)
    assert snapshot(tmp_path) == before


def test_a_sweep_whose_every_job_is_refused_leaves_nothing(forked, tmp_path) -> None:
    before = snapshot(tmp_path)
    proc = forked("train", "-m", "model=tiny", "optim.lr=-1,-2", "run_root=R", cwd=tmp_path)
    assert proc.returncode == 2 and "optim.lr" in proc.stderr
    assert snapshot(tmp_path) == before  # R/, R/sweeps/ and the sweep dir were made by it: all gone again
