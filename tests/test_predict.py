"""`sft predict`: csv / jsonl / txt in, csv / jsonl out, input columns kept, label names and
per-class probabilities added; bad input ends with a clear message."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, read_jsonl

from sftcli.commands import run_predict
from sftcli.errors import ConfigError, DataError

NAMES = ["ham", "spam"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A run trained for two steps on a csv whose text column is "sentence" (not the default "text")."""
    d = tmp_path_factory.mktemp("predict")
    with (d / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence", "label"])
        writer.writerows([f"message {i} {NAMES[i % 2]}", NAMES[i % 2]] for i in range(40))
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    env = {**os.environ, "SFT_CACHE_DIR": str(cache_dir), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "sftcli", "train", "data=files", f"data.train={d / 'train.csv'}",
                           "data.text_column=sentence", *overrides, "trainer.max_steps=2", f"run_root={d}",
                           "run_name=run"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return d / "run"


def sft_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SFT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "sftcli", "predict", *args], capture_output=True, text=True,
                          cwd=cwd, env={**env, "TOKENIZERS_PARALLELISM": "false"}, timeout=300)


def check_predictions(records: list[dict], inputs: list[dict]) -> None:
    """Same rows in the same order, input fields untouched, a label name and probabilities that sum to 1."""
    assert len(records) == len(inputs)
    for out, inp in zip(records, inputs, strict=True):
        assert {k: out[k] for k in inp} == inp
        probs = [float(out[f"prob_{name}"]) for name in NAMES]
        assert abs(sum(probs) - 1.0) < 1e-4
        # The label's probability is the largest (as written, to 6 decimals: a near-tie may print equal).
        assert float(out[f"prob_{out['pred_label']}"]) == max(probs)
        assert set(out) == {*inp, "pred_label", *(f"prob_{n}" for n in NAMES)}


def test_predict_csv_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    inputs = [{"id": "7", "sentence": 'free prize, "click" now', "note": "café"},
              {"id": "8", "sentence": "see you at lunch", "note": ""},
              {"id": "9", "sentence": "", "note": "an empty text still gets a prediction"}]
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "sentence", "note"])
        writer.writeheader()
        writer.writerows(inputs)
    proc = sft_predict(f"checkpoint={checkpoint}", f"input={src}", "output=out/pred.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "out" / "pred.csv").open(newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    check_predictions(records, inputs)
    assert list(records[0])[:3] == ["id", "sentence", "note"]  # input columns first, in their order
    assert "3 predictions written" in proc.stdout and not list((tmp_path / "out").glob("*.tmp"))


def test_predict_jsonl_round_trip(checkpoint: Path, tmp_path: Path) -> None:
    inputs = [{"sentence": "win money now", "meta": {"source": "sms", "n": [1, 2]}},
              {"sentence": "meeting moved to 3pm", "meta": None}]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(inputs[0]) + "\n\n" + json.dumps(inputs[1]) + "\n")
    proc = sft_predict(f"checkpoint={checkpoint}", f"input={src}", f"output={tmp_path / 'pred.jsonl'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_predictions(read_jsonl(tmp_path / "pred.jsonl"), inputs)


def test_predict_txt_input_streams_in_batches(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(f"line {i}" for i in range(5)) + "\n\n")
    run_predict([f"checkpoint={checkpoint}", f"input={src}", f"output={tmp_path / 'p.jsonl'}", "batch_size=2"])
    # A .txt line lands in the checkpoint's text column ("sentence").
    check_predictions(read_jsonl(tmp_path / "p.jsonl"), [{"sentence": f"line {i}"} for i in range(5)])


def test_predict_jsonl_to_csv_writes_nested_values_as_json(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"sentence": "a", "tags": ["x", "y"]}) + "\n")
    run_predict([f"checkpoint={checkpoint}", f"input={src}", f"output={tmp_path / 'p.csv'}"])
    with (tmp_path / "p.csv").open(newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert json.loads(row["tags"]) == ["x", "y"] and row["pred_label"] in NAMES


@pytest.mark.parametrize("name,content,args,expected", [
    ("in.csv", "id,text\n1,hello\n", [], "has no column 'sentence' (text_column); columns found: ['id', 'text']"),
    ("in.jsonl", '{"sentence": "a"}\n{"sentence": oops}\n', [], "malformed JSON line at {path}:2"),
    ("in.jsonl", '{"sentence": "a"}\n{"other": "b"}\n', [], "{path}:2 has no field 'sentence'"),
    ("in.csv", "sentence,x\na,1\nb,2,3\n", [], "{path}:3 has more fields than the header"),
    ("in.parquet", "x", [], "unsupported file type .parquet"),
    ("in.csv", "sentence\n\xe9\n", ["latin1"], "is not UTF-8 text"),
])
def test_predict_bad_input(checkpoint: Path, tmp_path: Path, name: str, content: str, args: list[str],
                           expected: str) -> None:
    src = tmp_path / name
    src.write_bytes(content.encode("latin-1" if args else "utf-8"))
    out = tmp_path / "p.csv"
    with pytest.raises(DataError) as info:
        run_predict([f"checkpoint={checkpoint}", f"input={src}", f"output={out}"])
    assert expected.format(path=src) in str(info.value)
    assert not out.exists() and not (tmp_path / "p.csv.tmp").exists()  # no partial output


def test_predict_bad_arguments(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    with pytest.raises(ConfigError, match="must end in .csv or .jsonl"):
        run_predict([f"checkpoint={checkpoint}", f"input={src}", f"output={tmp_path / 'p.parquet'}"])
    with pytest.raises(DataError, match="input: file not found"):
        run_predict([f"checkpoint={checkpoint}", f"input={tmp_path / 'nope.csv'}", f"output={tmp_path / 'p.csv'}"])


def test_predict_error_through_the_cli(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"sentence": "a"}\n{"sentence": "b",}\n')
    proc = sft_predict(f"checkpoint={checkpoint}", f"input={src}", "output=p.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"sft: error: input: malformed JSON line at {src}:2" in proc.stderr
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.jsonl.tmp").exists()


def test_pair_checkpoints_need_the_pair_column_in_the_input(tmp_path: Path) -> None:
    from sftcli.commands.predict import read_rows

    src = tmp_path / "in.csv"
    src.write_text("premise,other\na,b\n")
    with pytest.raises(DataError, match=r"no column 'hypothesis' \(text_pair_column\); columns found"):
        list(read_rows(src, ("premise", "hypothesis")))
    txt = tmp_path / "in.txt"
    txt.write_text("a\n")
    with pytest.raises(DataError, match="takes text pairs"):
        list(read_rows(txt, ("premise", "hypothesis")))
    src.write_text("premise,hypothesis\na,b\n")
    assert list(read_rows(src, ("premise", "hypothesis"))) == [{"premise": "a", "hypothesis": "b"}]
