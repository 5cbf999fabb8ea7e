"""`+recipe=best` on every encoder family a user brings (`model=hf model.name_or_path=DIR`), through the real
CLI: RUN/model answers through plain transformers' pipeline as `sft predict` does, and `sft export
format=onnx` answers through onnxruntime alone, in a process that never imports sftcli."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_jsonl
from transformers import AutoConfig, AutoModel

from sftcli.config import ModelConfig
from sftcli.model import load_tokenizer

TEXTS = ["What is the capital of Peru?", "Who wrote Hamlet?", "How many feet are in a mile?",
         "What does NASA stand for and when was it founded, and by whom?", "Why is the sky blue?", "a"]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=256)
# The embedded tokenizer's ids of [PAD], [CLS] and [SEP], for the families whose config names them.
SPECIAL = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
FAMILIES = {
    "bert": SMALL, "roberta": {**SMALL, **SPECIAL, "pad_token_id": 1}, "xlm-roberta": {**SMALL, **SPECIAL, "pad_token_id": 1},
    "mpnet": {**SMALL, **SPECIAL, "pad_token_id": 1}, "electra": {**SMALL, "embedding_size": 32},
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=256),
    "deberta-v2": {**SMALL, "relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"]},
    "modernbert": {**SMALL, **SPECIAL, "cls_token_id": 101, "sep_token_id": 102, "global_attn_every_n_layers": 1},
}
# Encoders that take no token types: their tokenizers give input_ids and attention_mask alone.
NO_TOKEN_TYPES = {"distilbert", "modernbert"}
# The default suite runs two (one without token types); CI runs the rest after it.
DEFAULT_SUITE = {"bert", "distilbert"}

# transformers, numpy and onnxruntime alone: what a user handed RUN/model and RUN/onnx runs.
PLAIN = r"""
import json, sys
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer, pipeline
model_dir, onnx_dir, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
classify = pipeline("text-classification", model=model_dir, trust_remote_code=True, top_k=None)
piped = [{d["label"]: d["score"] for d in row} for row in classify(texts, batch_size=4, truncation=True)]
tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
session = ort.InferenceSession(onnx_dir + "/model.onnx", providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
logits = session.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0]
probs = np.exp(logits - logits.max(1, keepdims=True))
probs /= probs.sum(1, keepdims=True)
id2label = json.load(open(onnx_dir + "/config.json"))["id2label"]
onnx = [{id2label[str(j)]: float(p[j]) for j in range(len(p))} for p in probs]
print(json.dumps({"pipeline": piped, "onnx": onnx, "inputs": names, "sftcli": "sftcli" in sys.modules}))
"""


def _encoder_dir(path: Path, family: str) -> Path:
    """A tiny random encoder of `family` with the embedded model's WordPiece tokenizer."""
    tok = load_tokenizer(ModelConfig(source="tiny"))
    config = AutoConfig.for_model(family, **FAMILIES[family], vocab_size=len(tok))
    AutoModel.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    if family in NO_TOKEN_TYPES:  # as these families' own tokenizers say
        tok_config = json.loads((path / "tokenizer_config.json").read_text())
        tok_config["model_input_names"] = ["input_ids", "attention_mask"]
        (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return path


@pytest.mark.parametrize("family", [f if f in DEFAULT_SUITE else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(FAMILIES)])
def test_recipe_export_and_onnx_on_every_encoder_family(sft, tmp_path: Path, family: str) -> None:
    where = _encoder_dir(tmp_path / "encoder", family)
    sft("train", "+recipe=best", "model=hf", f"model.name_or_path={where}", "model.max_length=64",
        "~trainer.epochs", "~loss.self_training_rounds", "trainer.max_steps=6", "loss.self_training_every=3",
        "trainer.eval_every=3", "trainer.save_every=3", "trainer.batch_size=8", "trainer.unlabeled_batch_size=8",
        "data.max_unlabeled=128", "optim.lr=1e-3", "run_name=r", check=True)
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "sft_encoder" and config["encoder"]["model_type"] == family
    assert config["pooling"] == "mean"  # the recipe's head
    sft("export", str(run), "format=onnx", check=True)
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    sft("predict", f"checkpoint={run}", f"input={src}", f"output={tmp_path / 'torch.jsonl'}", check=True)
    sft("predict", f"checkpoint={run / 'onnx'}", f"input={src}", f"output={tmp_path / 'onnx.jsonl'}", check=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    plain = subprocess.run([sys.executable, "-c", PLAIN, str(run / "model"), str(run / "onnx"), json.dumps(TEXTS)],
                           capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert plain.returncode == 0, plain.stderr
    theirs = json.loads(plain.stdout.strip().splitlines()[-1])
    assert theirs["sftcli"] is False
    assert ("token_type_ids" in theirs["inputs"]) == (family not in NO_TOKEN_TYPES)
    names = summary["label_names"]
    ours, ours_onnx = read_jsonl(tmp_path / "torch.jsonl"), read_jsonl(tmp_path / "onnx.jsonl")
    for i, mine in enumerate(ours):
        for name in names:
            p = mine[f"prob_{name}"]
            assert abs(theirs["pipeline"][i][name] - p) < 1e-4, (i, name)
            assert abs(theirs["onnx"][i][name] - p) < 1e-4, (i, name)
            assert abs(ours_onnx[i][f"prob_{name}"] - p) < 1e-4, (i, name)
