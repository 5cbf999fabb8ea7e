"""Shared helpers: run the real CLI in a subprocess, on the tiny model, in a temporary runs root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Small, fast settings for end-to-end runs on model=tiny.
TINY = ["model=tiny", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.save_every=2", "trainer.log_every=1",
        "trainer.batch_size=8", "trainer.unlabeled_batch_size=8", "trainer.eval_batch_size=256",
        "data.max_unlabeled=256"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft-cache")


@pytest.fixture
def sft(tmp_path: Path, cache_dir: Path):
    """sft(*args, timeout=..., env=...) -> CompletedProcess; runs under tmp_path with runs in tmp_path/runs.
    merge_stderr=True: stderr goes into stdout, interleaved as on a terminal."""

    def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None,
            check: bool | None = None, merge_stderr: bool = False) -> subprocess.CompletedProcess:
        # One thread per sft process: tiny models gain nothing from more, and tests run beside each other.
        full_env = {"OMP_NUM_THREADS": "1", **os.environ, "SFT_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        full_env.pop("SFT_DEBUG", None)
        proc = subprocess.run([sys.executable, "-m", "sftcli", *args], cwd=cwd or tmp_path, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                              text=True, timeout=timeout)
        if check is True and proc.returncode != 0:
            raise AssertionError(f"sft {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def run_dirs(root: Path) -> list[Path]:
    """Run directories under a runs root (those with a config.yaml), oldest first."""
    found = (p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_env(cache_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the sft fixture runs the CLI with, for tests that start it themselves (Popen)."""
    full = {"OMP_NUM_THREADS": "1", **os.environ, "SFT_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full.pop("SFT_DEBUG", None)
    return full


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll until predicate() holds; fail naming `what` (and early when `proc` has already exited)."""
    import time

    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------------
# Many quick command lines (tests/forked_cli.py): the generated and the reported bad inputs.

# A one-step run on small files: what a generated case trains when its input is accepted.
FAST = ["model=tiny", "trainer.max_steps=1", "trainer.eval_every=0", "trainer.save_every=0", "trainer.batch_size=4",
        "trainer.unlabeled_batch_size=4", "trainer.eval_batch_size=64", "trainer.progress=none", "run_root=runs"]


def data_args(d: Path) -> list[str]:
    return ["data=files", f"data.train={d / 'train.csv'}", f"data.validation={d / 'val.csv'}",
            f"data.test={d / 'test.csv'}", "data.labels_per_class=null"]


@pytest.fixture(scope="session")
def forked(cache_dir: Path):
    from forked_cli import ForkedCli

    cli = ForkedCli(cli_env(cache_dir))
    yield cli
    cli.close()


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the cases' workspaces (each case makes its own inside)."""
    return tmp_path_factory.mktemp("cases")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small labeled files (two classes) that the quick runs train on."""
    from generated import good_rows, write_table

    d = tmp_path_factory.mktemp("data")
    write_table(d / "train.csv", good_rows(6))
    write_table(d / "val.csv", good_rows(2))
    write_table(d / "test.csv", good_rows(2))
    return d


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, forked) -> Path:
    """A finished tiny run (two checkpoints, model/, summary.json), for cases that copy and damage it."""
    work = tmp_path_factory.mktemp("reference")
    args = [*FAST, *data_args(data_dir), "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=2",
            "run_name=ref"]
    r = forked("train", *args, cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr
    return work / "runs" / "ref"


# The generated bad-input tests (tests/test_generated_inputs.py): seeded, and bounded in the default suite;
# SFT_HYPOTHESIS_PROFILE=ci is CI's longer pass, =large the larger run (docs/reliability.md).
from hypothesis import settings  # noqa: E402

settings.register_profile("default", max_examples=6, derandomize=True, deadline=None)
settings.register_profile("ci", max_examples=80, derandomize=True, deadline=None)  # .ci/run, after the suite
settings.register_profile("large", max_examples=400, derandomize=True, deadline=None)
settings.load_profile(os.environ.get("SFT_HYPOTHESIS_PROFILE", "default"))


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook signature
    from generated import TALLY

    if TALLY.cases:
        for line in TALLY.lines():
            terminalreporter.write_line(line)
