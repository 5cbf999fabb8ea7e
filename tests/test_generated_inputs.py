"""Generated bad inputs through the real CLI (RELIABILITY.md E.13-15, H.21-23): config values over the whole
schema of train, eval and predict, command-line grammar, malformed data files of every format, and damaged
checkpoints and model directories. Each case must end as promised (tests/generated.py: check_promise).

Seeded (derandomized) and bounded for the default suite (6 cases per test); CI runs 80 per test after the
suite, and the larger run (400 per test) is

    SFT_HYPOTHESIS_PROFILE=large .venv/bin/python -m pytest tests/test_generated_inputs.py -q

Each session ends with a tally of every checked case (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import FAST, data_args
from generated import (
    DAMAGE,
    EVAL_KEYS,
    GRAMMAR,
    HOSTILE,
    PREDICT_KEYS,
    TRAIN_KEYS,
    WRONG_JSON,
    check_promise,
    damage_bytes,
    good_rows,
    snapshot,
    write_table,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftcli.config.schema import ALIASES

SETTINGS = settings(suppress_health_check=list(HealthCheck))


class Workspace:
    """A fresh folder per generated case (cwd of the command), with something of the user's in it."""

    def __init__(self, base: Path) -> None:
        base.mkdir(exist_ok=True)
        # Two levels down, so a value such as ../.. still lands inside the test's own folder.
        self.path = Path(tempfile.mkdtemp(dir=base)) / "a" / "ws"
        self.path.mkdir(parents=True)
        (self.path / "runs" / "old").mkdir(parents=True)
        (self.path / "runs" / "old" / "keep.txt").write_text("the user's")
        (self.path / "mine.txt").write_text("the user's too")
        self.before = snapshot(self.path)

    def after(self) -> dict[str, str]:
        return snapshot(self.path)

    def close(self) -> None:
        shutil.rmtree(self.path.parent.parent, ignore_errors=True)


def key_names(key: str) -> list[str]:
    alias = {v: k for k, v in ALIASES.items()}.get(key)
    return [key, key.split(".")[-1], key.split(".")[0], *([alias] if alias else [])]


# ------------------------------------------------------------------------------------------------
# Config values


@SETTINGS
@given(key=st.sampled_from(TRAIN_KEYS), value=st.sampled_from(HOSTILE))
def test_train_config_values(base, forked, data_dir, key, value) -> None:
    ws = Workspace(base)
    try:
        r = forked("train", *FAST, *data_args(data_dir), f"{key}={value}", cwd=ws.path, timeout=90)
        # A run_root or cache_dir named by the value is where a successful run writes.
        new_ok = ("",) if key in ("run_root", "cache_dir") else ("runs/",)
        # A path the command cannot use may be named by itself rather than by its key.
        names = [*key_names(key), value.strip("'")[:40]]
        check_promise(r, ws.before, ws.after(), names, new_ok=new_ok, codes=(0, 2, 3))
    finally:
        ws.close()


@SETTINGS
@given(key=st.sampled_from(EVAL_KEYS), value=st.sampled_from(HOSTILE))
def test_eval_config_values(base, forked, reference, key, value) -> None:
    ws = Workspace(base)
    try:
        r = forked("eval", f"checkpoint={reference}", "run_root=runs", f"{key}={value}", cwd=ws.path, timeout=90)
        new_ok = ("",) if key in ("run_root", "cache_dir") else ("runs/eval/",)
        check_promise(r, ws.before, ws.after(), key_names(key), new_ok=new_ok, codes=(0, 2))
    finally:
        ws.close()


@SETTINGS
@given(key=st.sampled_from(PREDICT_KEYS), value=st.sampled_from(HOSTILE))
def test_predict_config_values(base, forked, reference, data_dir, key, value) -> None:
    ws = Workspace(base)
    try:
        r = forked("predict", f"checkpoint={reference}", f"input={data_dir / 'test.csv'}", "output=pred.csv",
                   f"{key}={value}", cwd=ws.path, timeout=90)
        new_ok = ("",) if key == "output" else ("pred.csv",)
        check_promise(r, ws.before, ws.after(), key_names(key), new_ok=new_ok, codes=(0, 2))
    finally:
        ws.close()


@SETTINGS
@given(pieces=st.lists(st.sampled_from(GRAMMAR), min_size=1, max_size=3))
def test_command_line_grammar(base, forked, data_dir, pieces) -> None:
    ws = Workspace(base)
    try:
        base_args = [*FAST, *data_args(data_dir)]
        r = forked("train", *base_args, *pieces, cwd=ws.path, timeout=90)
        # A piece may clash with a key of the base command line (+recipe=best sets trainer.epochs).
        names = [p.split("=")[0].lstrip("+~-") for p in [*pieces, *base_args]] + [p[:40] for p in pieces]
        names += ["overrides", "argument"]
        after = ws.after()
        # A sweep in which one job trained keeps every job's record, the refused ones' too (sweep.csv).
        trained = any("/checkpoints/" in k for k in after if k not in ws.before)
        kept_ok = ("runs/sweeps",) if "-m" in pieces and trained else ()
        check_promise(r, ws.before, after, names, new_ok=("runs/",), codes=(0, 2), kept_ok=kept_ok)
    finally:
        ws.close()


# ------------------------------------------------------------------------------------------------
# Data files

FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
CELLS = st.one_of(st.none(), st.sampled_from(["", " ", "NaN", "nan", "None", "q", "s", "0", "1", "\u00e9t\u00e9"]),
                  st.text(max_size=30), st.integers(-3, 3), st.floats(allow_nan=True))


@st.composite
def labeled_rows(draw: st.DrawFn) -> list[dict]:
    rows = good_rows(3)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(rows) - 1))
        column = draw(st.sampled_from(["text", "label", "extra"]))
        rows[i] = {**rows[i], column: draw(CELLS)}
    if draw(st.booleans()):
        drop = draw(st.sampled_from(["text", "label"]))
        rows = [{k: v for k, v in r.items() if k != drop} for r in rows]
    return rows


@SETTINGS
@given(ext=st.sampled_from(FORMATS), rows=labeled_rows(), damage=st.sampled_from((None, *DAMAGE)),
       at=st.floats(0.05, 0.95), role=st.sampled_from(["train", "test", "validation"]))
def test_malformed_labeled_files(base, forked, data_dir, ext, rows, damage, at, role) -> None:
    ws = Workspace(base)
    try:
        path = ws.path / f"given{ext}"
        write_table(path, rows)
        if damage:
            path.write_bytes(damage_bytes(path.read_bytes(), damage, at))
        ws.before = snapshot(ws.path)
        args = [a for a in data_args(data_dir) if not a.startswith(f"data.{role}=")]
        r = forked("train", *FAST, *args, f"data.{role}={path}", cwd=ws.path, timeout=90)
        check_promise(r, ws.before, ws.after(), [path.name, f"data.{role}"], new_ok=("runs/",), codes=(0, 2))
    finally:
        ws.close()


@SETTINGS
@given(lines=st.lists(st.text(max_size=40), max_size=8), damage=st.sampled_from((None, *DAMAGE, "binary")),
       at=st.floats(0.05, 0.95))
def test_malformed_unlabeled_files(base, forked, data_dir, lines, damage, at) -> None:
    ws = Workspace(base)
    try:
        path = ws.path / "pile.txt"
        path.write_text("".join(f"{t}\n" for t in ["an unlabeled text", *lines]), errors="surrogateescape")
        if damage == "binary":
            path.write_bytes(bytes(range(256)) * 8)
        elif damage:
            path.write_bytes(damage_bytes(path.read_bytes(), damage, at))
        ws.before = snapshot(ws.path)
        r = forked("train", *FAST, *data_args(data_dir), "+strategy=mix", "lambda=0.1", f"data.unlabeled={path}",
                   cwd=ws.path, timeout=90)
        check_promise(r, ws.before, ws.after(), [path.name, "data.unlabeled"], new_ok=("runs/",), codes=(0, 2))
    finally:
        ws.close()


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints and model directories


def _files(reference: Path) -> list[str]:
    return sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*")
                  if p.is_file() and not p.relative_to(reference).as_posix().startswith((".hydra", "train.log")))


@st.composite
def damaged_file(draw: st.DrawFn, files: list[str]) -> tuple[str, str, bool]:
    name = draw(st.sampled_from(files))
    how = draw(st.sampled_from([*DAMAGE, "remove", *(f"json:{j}" for j in WRONG_JSON)] if name.endswith(".json")
                               else [*DAMAGE, "remove"]))
    return name, how, draw(st.booleans())


def apply_damage(run: Path, name: str, how: str, fix_manifest: bool, at: float = 0.5) -> None:
    target = run / name
    if how == "remove":
        target.unlink()
    elif how.startswith("json:"):
        target.write_text(how[5:])
    else:
        target.write_bytes(damage_bytes(target.read_bytes(), how, at))
    manifest = target.parent / "manifest.json"
    if fix_manifest and manifest.is_file() and target.name != "manifest.json":
        # The damage a manifest cannot see: the loaders themselves must catch it.
        import hashlib

        data = json.loads(manifest.read_text())
        rel = target.name
        if how == "remove":
            data["files"].pop(rel, None)
        else:
            blob = target.read_bytes()
            data["files"][rel] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        manifest.write_text(json.dumps(data))


COMMANDS = ("eval", "predict", "resume", "hf")


@SETTINGS
@given(data=st.data(), command=st.sampled_from(COMMANDS))
def test_damaged_checkpoints_and_model_dirs(base, forked, reference, data_dir, data, command) -> None:
    files = _files(reference)
    if command == "hf":
        files = [f for f in files if f.startswith("model/")]
    name, how, fix_manifest = data.draw(damaged_file(files))
    ws = Workspace(base)
    try:
        run = ws.path / "runs" / "ref"
        shutil.copytree(reference, run)
        apply_damage(run, name, how, fix_manifest)
        ws.before = snapshot(ws.path)
        ckpt = run / "checkpoints" / "step-000002"
        if command == "eval":
            r = forked("eval", f"checkpoint={run}", "run_root=runs", cwd=ws.path, timeout=90)
            new_ok = ("runs/eval/",)
        elif command == "predict":
            r = forked("predict", f"checkpoint={run}", f"input={data_dir / 'test.csv'}", "output=pred.csv",
                       cwd=ws.path, timeout=90)
            new_ok = ("pred.csv",)
        elif command == "resume":
            r = forked("train", *FAST, *data_args(data_dir), "trainer.max_steps=3", "trainer.save_every=1",
                       "trainer.keep_last=2", f"resume={ckpt}", "run_name=cont", cwd=ws.path, timeout=90)
            new_ok = ("runs/cont/",)
        else:
            r = forked("train", *FAST, *data_args(data_dir), "model=hf", f"model.name_or_path={run / 'model'}",
                       cwd=ws.path, timeout=90)
            new_ok = ("runs/",)
        target = Path(name)
        names = [target.name, str(run / target.parent), str(ckpt), "step-000002", "model.name_or_path", "resume"]
        case = f"{name}: {how}{' (manifest updated to match)' if fix_manifest else ''}"
        check_promise(r, ws.before, ws.after(), names, new_ok=new_ok, codes=(0, 2), case=case)
    finally:
        ws.close()


@pytest.mark.parametrize("args", [["seed=-1"], ["model=1"], ["data.train=/nonexistent.csv"], ["trainer.max_steps=1"]])
def test_the_forked_cli_ends_as_a_fresh_process_does(sft, forked, tmp_path, args) -> None:
    """The generated cases run in forked children (tests/forked_cli.py): the same exit code and message
    as `python -m sftcli` in a fresh interpreter."""
    fresh = sft("train", "model=tiny", "data=files", "data.train=/dev/null", *args, "run_root=fresh")
    child = forked("train", "model=tiny", "data=files", "data.train=/dev/null", *args, "run_root=forked",
                   cwd=tmp_path)
    assert child.returncode == fresh.returncode
    assert child.stderr.strip().splitlines()[-1] == fresh.stderr.strip().splitlines()[-1]
