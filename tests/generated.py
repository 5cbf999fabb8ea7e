"""What the generated bad-input tests draw from, and the promise each case is checked against
(RELIABILITY.md E and H): exit 2 (or the documented 0 / 3), no traceback, a message that names the key or
file, no folder left that was not there, and every file that was there unchanged."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from sftcli.config.schema import ALIASES, EvalConfig, PredictConfig, TrainConfig

# ------------------------------------------------------------------------------------------------
# Config keys and hostile values


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a schema that takes a value (groups descended into)."""
    out = []
    for name, info in model.model_fields.items():
        tp = info.annotation
        members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        sub = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
        if sub is None:
            out.append(f"{prefix}{name}")
        elif name != "strategy":  # strategy.* keys exist only with +strategy=...
            out += leaf_keys(sub, f"{prefix}{name}.")
    return out


TRAIN_KEYS = sorted({*leaf_keys(TrainConfig), *ALIASES} - {"loss.weight", "loss.tau"})
EVAL_KEYS = sorted(leaf_keys(EvalConfig))
PREDICT_KEYS = sorted(leaf_keys(PredictConfig))

# Values in Hydra's override grammar: non-finite and huge numbers, wrong types, empty and odd text,
# interpolations that cannot resolve, paths that climb out.
HOSTILE = [
    "nan", "inf", "-inf", "-1", "0", "-1e29", "1e29", "1e308", str(2**31), str(2**63), str(2**100), "-0.0",
    "''", "' '", "abc", "null", "[]", "[1,2]", "{a:1}", "${foo}", "${oc.env:SFT_SURELY_UNSET}", "true",
    "1e-300", "'" + "x" * 300 + "'", "../..", "/", "0.5", "2", "'\\u00e9\\u00e8'", "'a b'",
]

# Command-line pieces for grammar cases: a group given a number or null, broken brackets and quotes,
# Hydra's prefixes in the wrong place.
GRAMMAR = [
    "model=1", "data=null", "model=", "=tiny", "+model=tiny", "~model", "++seed=1", "seed", "seed==1",
    "trainer.max_steps=[", "trainer.max_steps={", "run_name='", 'run_name="', "model=tiny,hf",
    "+strategy=nope", "strategy=mix", "+strategy=mix", "lambda=0.5", "+recipe=best", "hydra.run.dir=",
    "loss.nokey=1", "trainer=1", "+trainer.new=1", "~trainer.max_steps", "data.train=[a.csv,b.csv]",
    "-m", "--cfg", "seed=${seed}", "x" * 5000, "seed=1 2", "\u00e9=1",
]


# ------------------------------------------------------------------------------------------------
# Workspace snapshots


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every path under root: "dir", or a file's sha256 (paths whose first part is in skip left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in skip:
            continue
        if p.is_symlink():
            out[rel.as_posix()] = "link"
        elif p.is_dir():
            out[rel.as_posix()] = "dir"
        else:
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Tally:
    """What every checked case ended in, printed at the end of the test session (conftest.py)."""

    cases: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    tracebacks: int = 0
    changed: int = 0
    left_behind: int = 0
    unnamed: int = 0

    def lines(self) -> list[str]:
        codes = ", ".join(f"exit {c}: {n}" for c, n in sorted(self.codes.items()))
        return [f"generated and reported bad inputs: {self.cases} cases ({codes}); tracebacks {self.tracebacks}, "
                f"files lost or changed {self.changed}, folders or files left behind {self.left_behind}, "
                f"exit-2 messages naming nothing given {self.unnamed}"]


TALLY = Tally()


def check_promise(result: Any, before: dict[str, str], after: dict[str, str], names: list[str],
                  new_ok: tuple[str, ...] = (), codes: tuple[int, ...] = (0, 2, 3), case: str = "",
                  kept_ok: tuple[str, ...] = ()) -> None:
    """The promise for one command line. names: what an exit-2 message may name (a key, a file, a path);
    new_ok: path prefixes a successful command may add (its run or output); kept_ok: prefixes a failed one
    may leave (a sweep in which some job trained keeps every job's record); case: what was done to the
    input, for the failure's message."""
    text = result.stdout + result.stderr
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(k for k in after if k not in before)
    named = result.returncode != 2 or any(n and n in result.stderr for n in names)
    TALLY.cases += 1
    TALLY.codes[result.returncode] = TALLY.codes.get(result.returncode, 0) + 1
    TALLY.tracebacks += "Traceback" in text
    TALLY.changed += bool(changed)
    left = [k for k in added if not k.startswith(kept_ok)] if kept_ok else added
    TALLY.left_behind += bool(left) and result.returncode != 0
    TALLY.unnamed += not named
    where = f"{case}\nsft {' '.join(a[:80] for a in result.argv)}\nexit {result.returncode}\n{text[-3000:]}"
    assert not result.timed_out, f"did not finish in time (a bad value accepted?):\n{where}"
    assert "Traceback" not in text, f"traceback:\n{where}"
    assert result.returncode in codes, f"exit code {result.returncode}:\n{where}"
    if result.returncode == 2:
        # sft's own message, or argparse's for Hydra's flags (--cfg without its argument).
        assert "error:" in result.stderr, f"no error message:\n{where}"
        assert named, f"the message names none of {names}:\n{where}"
    assert not changed, f"changed or removed: {changed}\n{where}"
    if result.returncode != 0:
        assert not left, f"left behind: {left[:10]}\n{where}"
    else:
        stray = [k for k in added if not any(k.startswith(p) or k == p.rstrip("/") or p.startswith(k + "/")
                                             for p in new_ok)]
        assert not stray, f"wrote outside its own directory: {stray[:10]}\n{where}"


# ------------------------------------------------------------------------------------------------
# Data files


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """rows in the format path's extension names (csv, tsv, json, jsonl, parquet, txt)."""
    ext = path.suffix
    if ext in (".csv", ".tsv"):
        buf = io.StringIO()
        names = list(dict.fromkeys(k for r in rows for k in r)) or ["text", "label"]
        w = csv.DictWriter(buf, fieldnames=names, delimiter="\t" if ext == ".tsv" else ",")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        path.write_text(buf.getvalue())
    elif ext == ".json":
        path.write_text(json.dumps(rows))
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = list(dict.fromkeys(k for r in rows for k in r)) or ["text", "label"]
        table = pa.table({c: [None if r.get(c) is None else str(r.get(c)) for r in rows] for c in cols})
        pq.write_table(table, path)
    else:
        path.write_text("".join(f"{r.get('text', '')}\n" for r in rows))


def good_rows(n_per_class: int = 4) -> list[dict[str, Any]]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rows = []
    for i in range(n_per_class):
        rows.append({"text": f"what is {words[i % 8]} number {i}", "label": "q"})
        rows.append({"text": f"the {words[(i + 3) % 8]} is here {i}", "label": "s"})
    return rows


def damage_bytes(data: bytes, mode: str, at: float) -> bytes:
    """One way a file goes bad: truncated, emptied, garbage, latin-1 bytes, a NUL, or doubled."""
    cut = int(len(data) * at)
    if mode == "truncate":
        return data[:cut]
    if mode == "empty":
        return b""
    if mode == "garbage":
        return bytes((i * 131 + 7) % 256 for i in range(max(16, len(data) // 4)))
    if mode == "latin1":
        return data[:cut] + "caf\u00e9 na\u00efve".encode("latin-1") + data[cut:]
    if mode == "nul":
        return data[:cut] + b"\x00" + data[cut:]
    if mode == "double":
        return data + data
    raise ValueError(mode)


DAMAGE = ("truncate", "empty", "garbage", "latin1", "nul", "double")
# Valid JSON of the wrong shape, for the JSON files of a checkpoint or a model directory.
WRONG_JSON = ("[]", "null", "{}", "1", '"text"', '{"files": []}', '{"files": {"x": null}}', '{"config": 1}')
