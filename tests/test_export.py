"""What a run hands the user: RUN/model/ answers through plain transformers exactly as `sft predict` does,
whatever the head; its model card names the metrics; checkpoints keep training state only where resume
needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, read_jsonl

from sftcli import checkpoint as ckpt

TEXTS = ["What is the capital of Peru?", "Who wrote Hamlet?", "How many feet are in a mile?",
         "What does NASA stand for?", "Where is the Eiffel Tower?", "Why is the sky blue?", "a", ""]

# transformers alone, in a process that never imports sftcli: what a user who was handed RUN/model runs.
PLAIN = r"""
import json, sys
from transformers import AutoModelForSequenceClassification, pipeline
path, texts, remote = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=remote)
classify = pipeline("text-classification", model=path, trust_remote_code=remote, top_k=None)
out = [{d["label"]: d["score"] for d in row} for row in classify(texts, batch_size=3)]
print(json.dumps({"class": type(model).__name__, "scores": out}))
"""


def plain_transformers(path: Path, texts: list[str], remote: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", PLAIN, str(path), json.dumps(texts), "1" if remote else "0"],
                          capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


def sft_predictions(sft, run: Path, tmp_path: Path) -> list[dict]:
    src, out = tmp_path / "texts.jsonl", tmp_path / "pred.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    sft("predict", f"checkpoint={run}", f"input={src}", f"output={out}", check=True)
    return read_jsonl(out)


CASES = {
    "pooler": [],
    "mean": ["model.head_pooling=mean"],
    # The recommended semi-supervised recipe (mean head, fresh students), shortened to two rounds.
    "self_training": ["+recipe=self_training", "trainer.max_steps=6", "loss.self_training_every=3",
                      "trainer.eval_every=3", "trainer.save_every=3"],
    # The recommended few-labels recipe (SupCon, fresh students), shortened to two rounds.
    "best": ["+recipe=best", "~trainer.epochs", "~loss.self_training_rounds", "loss.self_training_every=3",
             "trainer.eval_every=3", "trainer.save_every=3"],
}


# best has the mean head too, so the default suite runs pooler and best; CI runs the others after it.
SLOW_CASES = {"mean", "self_training"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c
                                  for c in sorted(CASES)])
def test_exported_model_answers_like_sft_predict_through_plain_transformers(sft, tmp_path, case) -> None:
    sft("train", *TINY, "trainer.max_steps=6", "optim.lr=1e-3",
        *CASES[case], "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "model"
    model_dir = run / summary["model"]
    remote = case != "pooler"
    plain = plain_transformers(model_dir, TEXTS, remote)
    assert plain.returncode == 0, plain.stderr
    result = json.loads(plain.stdout.strip().splitlines()[-1])
    assert result["class"] == ("SftEncoderForSequenceClassification" if remote else "BertForSequenceClassification")
    ours = sft_predictions(sft, run, tmp_path)
    names = summary["label_names"]
    for theirs, mine in zip(result["scores"], ours, strict=True):
        for name in names:
            assert abs(theirs[name] - mine[f"prob_{name}"]) < 1e-4, (name, theirs, mine)
        ranked = sorted(names, key=lambda n: -mine[f"prob_{n}"])
        if mine[f"prob_{ranked[0]}"] - mine[f"prob_{ranked[1]}"] > 1e-4:  # a clear winner: the same label
            assert max(theirs, key=theirs.get) == mine["pred_label"]
    if remote:
        # Without trust_remote_code, transformers refuses the directory instead of answering with a
        # stock BERT head (what model.head_pooling=mean exports used to do, at chance accuracy).
        refused = plain_transformers(model_dir, TEXTS[:1], remote=False)
        assert refused.returncode != 0 and "trust_remote_code" in refused.stderr
    # The model card: the Hugging Face metadata header, the labels, the command and the metrics.
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    assert f"{summary['test/accuracy']:.4f}" in card and f"{summary['val/accuracy']:.4f}" in card
    assert ", ".join(names) in card and "run_name=r" in card
    assert ("trust_remote_code=True" in card) == remote
    # Its Hub metadata: the data set, language and the results a Hub page shows (model-index).
    import yaml

    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["datasets"] == ["CogComp/trec"] and meta["language"] == ["en"]
    (entry,) = meta["model-index"]
    results = {r["dataset"]["split"]: {m["name"]: m["value"] for m in r["metrics"]} for r in entry["results"]}
    assert entry["name"] == "r" and all(r["task"]["type"] == "text-classification" for r in entry["results"])
    assert results["test"] == {"test accuracy": summary["test/accuracy"], "test macro-F1": summary["test/macro_f1"]}
    assert results["validation"]["validation accuracy"] == summary["val/accuracy"]
    # No training state in the export; its weights are the best checkpoint's (held once, as a hard link),
    # unless the run folded the unlabeled texts' class prior into the head (+recipe=best): then only the
    # head's bias differs (tests/test_class_prior.py), in a file of its own.
    assert not {"train_state.pt", "manifest.json", "sft_state.json"} & {p.name for p in model_dir.iterdir()}
    best = run / summary["best_checkpoint"] / "model.safetensors"
    folded = summary.get("class_prior", {}).get("folded", False)
    assert folded == (case == "best")
    assert ((model_dir / "model.safetensors").read_bytes() == best.read_bytes()) != folded
    assert os.path.samefile(model_dir / "model.safetensors", best) != folded


def test_eval_of_the_exported_model_reproduces_the_run(sft, tmp_path) -> None:
    sft("train", *TINY, "model.head_pooling=mean", "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    # checkpoint=RUN/model means the run (its best checkpoint), so eval and predict take the export's path.
    sft("eval", f"checkpoint={run / 'model'}", "precision=bf16", "run_name=e", check=True)
    result = json.loads((tmp_path / "runs" / "eval" / "e" / "eval.json").read_text())
    assert result["checkpoint"].endswith(summary["best_checkpoint"])
    assert result["accuracy"] == pytest.approx(summary["test/accuracy"], abs=1e-9)


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_only_the_newest_checkpoint_keeps_training_state(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.max_steps=6", "trainer.keep_last=3", "run_name=r", check=True)
    root = tmp_path / "runs" / "r" / "checkpoints"
    kept = {p.name: ckpt.verify(p) for _, p in ckpt.listed(root)}
    assert sorted(kept) == ["step-000002", "step-000004", "step-000006"]
    assert [name for name, m in kept.items() if ckpt.is_resumable(m)] == ["step-000006"]
    for name in ("step-000002", "step-000004"):
        files = {p.name for p in (root / name).iterdir()}
        assert "train_state.pt" not in files and not any(f.startswith("rng_state") for f in files)
        assert {"model.safetensors", "config.json", "sft_state.json"} <= files
    # A weights-only checkpoint still evaluates; resuming from it is refused, naming it.
    assert sft("eval", f"checkpoint={root / 'step-000002'}", "run_name=e").returncode == 0
    proc = sft("train", *TINY, "trainer.max_steps=8", f"resume={root / 'step-000004'}", "run_name=r2")
    assert proc.returncode == 2 and "step-000004 holds weights only" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # keep_train_state=2: the previous checkpoint stays resumable too.
    sft("train", *TINY, "trainer.max_steps=6", "trainer.keep_last=3", "trainer.keep_train_state=2",
        "run_name=r3", check=True)
    root3 = tmp_path / "runs" / "r3" / "checkpoints"
    assert [p.name for _, p in ckpt.listed(root3) if ckpt.is_resumable(ckpt.verify(p))] == \
        ["step-000004", "step-000006"]


def test_save_only_model_keeps_the_best_weights_alone(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.max_steps=6", "trainer.save_only_model=true", "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    names = [p.name for _, p in ckpt.listed(run / "checkpoints")]
    assert [f"checkpoints/{n}" for n in names] == [summary["best_checkpoint"]]
    assert not ckpt.is_resumable(ckpt.verify(run / summary["best_checkpoint"]))
    assert (run / "model" / "model.safetensors").is_file()
    assert summary["last_checkpoint"] in (None, summary["best_checkpoint"])
    proc = sft("train", *TINY, "trainer.max_steps=6", "trainer.save_only_model=true", "run_name=r", "resume=auto")
    assert proc.returncode == 2 and "weights only" in proc.stderr and "Traceback" not in proc.stderr


def test_a_damaged_newest_checkpoint_with_weights_only_behind_it_says_why(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.keep_last=2", "run_name=d", check=True)
    target = tmp_path / "runs" / "d" / "checkpoints" / "step-000004"
    (target / "model.safetensors").write_bytes(b"broken")
    proc = sft("train", *TINY, "trainer.max_steps=6", "run_name=d", "resume=auto")
    assert proc.returncode == 2, proc.stderr
    assert "skipping damaged checkpoint" in proc.stderr and "keep_train_state=2" in proc.stderr
