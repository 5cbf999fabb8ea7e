"""`sft export RUN format=onnx [quantize=int8]`: a directory that onnxruntime (and Optimum's pipeline) load
without sft, answering as `sft predict` does; `sft predict` runs it too; bad requests exit 2, losing
nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, read_jsonl

from sftcli.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["What is the capital of Peru?", "Who wrote Hamlet?", "How many feet are in a mile?",
         "What does NASA stand for?", "Where is the Eiffel Tower?", "Why is the sky blue?", "a"]


def _train(sft, tmp_path: Path, *extra: str) -> Path:
    sft("train", *TINY, "trainer.max_steps=6", "optim.lr=1e-3", *extra, "run_name=r", check=True)
    return tmp_path / "runs" / "r"


def _predict(sft, checkpoint: Path, tmp_path: Path, name: str) -> list[dict]:
    src, out = tmp_path / "texts.jsonl", tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    sft("predict", f"checkpoint={checkpoint}", f"input={src}", f"output={out}", check=True)
    return read_jsonl(out)


def test_fp32_and_int8_exports_answer_as_the_run_does(sft, tmp_path: Path) -> None:
    # The default head (BERT's own pooler): a stock architecture, exported the same way.
    run = _train(sft, tmp_path)
    fp32 = sft("export", str(run), "format=onnx", check=True)
    assert "largest logit difference" in fp32.stdout
    sft("export", f"checkpoint={run}", "format=onnx", "quantize=int8", check=True)
    for folder in ("onnx", "onnx-int8"):
        files = {p.name for p in (run / folder).iterdir()}
        assert {"model.onnx", "config.json", "tokenizer_config.json", "sft_export.json"} <= files
        config = json.loads((run / folder / "config.json").read_text())
        assert config["model_type"] == "bert" and "auto_map" not in config
        assert config["id2label"] == {str(i): n for i, n in enumerate(json.loads((run / "summary.json").read_text())["label_names"])}
        tok = json.loads((run / folder / "tokenizer_config.json").read_text())
        assert tok["model_max_length"] == 64  # the run's model.max_length (model=tiny)
    record = json.loads((run / "onnx" / "sft_export.json").read_text())
    assert record["max_abs_logit_diff_fp32"] < 1e-4 and record["quantize"] == "none"
    ours = _predict(sft, run, tmp_path, "torch")
    onnx = _predict(sft, run / "onnx", tmp_path, "onnx")
    int8 = _predict(sft, run / "onnx-int8", tmp_path, "int8")
    names = [k[len("prob_"):] for k in ours[0] if k.startswith("prob_")]
    for mine, exported, quantized in zip(ours, onnx, int8, strict=True):
        for name in names:
            assert abs(mine[f"prob_{name}"] - exported[f"prob_{name}"]) < 1e-4
            assert abs(mine[f"prob_{name}"] - quantized[f"prob_{name}"]) < 0.05  # int8: close, not equal
    # Exporting again replaces the previous export whole.
    (run / "onnx" / "model.onnx").write_bytes(b"stale")
    sft("export", str(run), "format=onnx", check=True)
    assert (run / "onnx" / "model.onnx").stat().st_size > 1000


def test_bad_export_requests_exit_2_and_lose_nothing(sft, tmp_path: Path) -> None:
    run = _train(sft, tmp_path)
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = sft("export", str(run), "format=onnx", f"output={mine}")
    assert refused.returncode == 2 and "is not an sft export" in refused.stderr
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    for args, message in ((["format=tflite"], "format"), (["quantize=int4"], "quantize"),
                          ([str(tmp_path / "nope"), "format=onnx"], "does not exist"),
                          ([str(run), str(run)], "one run directory")):
        proc = sft("export", *args, *([] if any(a.startswith(str(tmp_path)) for a in args) else [str(run)]))
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not (run / "onnx").exists()
    # A damaged export: sft predict names the file, exit 2, no traceback.
    sft("export", str(run), "format=onnx", check=True)
    src = tmp_path / "texts.txt"
    src.write_text("Who wrote Hamlet?\n")
    for name, damage in (("model.onnx", b"not a graph"), ("config.json", b'{"model_type": 3}'),
                         ("sft_export.json", b'{"max_length":')):
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(run / "onnx", broken)
        (broken / name).write_bytes(damage)
        proc = sft("predict", f"checkpoint={broken}", f"input={src}", f"output={tmp_path / 'p.csv'}")
        assert proc.returncode == 2 and str(broken / name) in proc.stderr and "Traceback" not in proc.stderr, (
            name, proc.stderr)
        assert not (tmp_path / "p.csv").exists()


def test_a_missing_onnx_package_names_the_pip_command(monkeypatch) -> None:
    import importlib.util

    from sftcli import onnx_export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs onnxruntime, not installed; install with: pip install 'sftcli\[onnx\]'"):
        onnx_export.require_onnx("export")


# Optimum's onnxruntime model and pipeline, in their own environment (scripts/setup_optimum.sh: the
# optimum-onnx release on the index needs transformers < 4.58), offline, without sft.
OPTIMUM = r"""
import json, sys
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
path, texts = sys.argv[1], json.loads(sys.argv[2])
model = ORTModelForSequenceClassification.from_pretrained(path)
classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path), top_k=None)
print(json.dumps({"scores": [{d["label"]: d["score"] for d in row} for row in classify(texts)],
                  "sftcli": "sftcli" in sys.modules}))
"""


@pytest.mark.slow  # builds (once) a second environment with Optimum: a minute or two
def test_optimum_pipeline_loads_the_export_offline(sft, tmp_path: Path) -> None:
    run = _train(sft, tmp_path, "+recipe=best", "~trainer.epochs", "~loss.self_training_rounds",
                 "loss.self_training_every=3", "trainer.eval_every=3", "trainer.save_every=3")
    sft("export", str(run), "format=onnx", check=True)
    venv = REPO / ".venv-optimum"
    subprocess.run(["bash", str(REPO / "scripts" / "setup_optimum.sh"), str(venv)], check=True, timeout=1200,
                   capture_output=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", OPTIMUM, str(run / "onnx"), json.dumps(TEXTS)],
                          capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["sftcli"] is False
    for scores, mine in zip(theirs["scores"], _predict(sft, run, tmp_path, "torch"), strict=True):
        for name, p in scores.items():
            assert abs(p - mine[f"prob_{name}"]) < 1e-4, (name, scores, mine)
