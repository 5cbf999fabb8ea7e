"""model.max_length=auto: the encoder's own limit (a sentence-transformers model's max_seq_length, else its
tokenizer's model_max_length, at most its position embeddings), resolved once before the run starts and
recorded as a number, so eval, predict, the export and a resume read what the run used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST, data_args
from transformers import AutoModel, BertConfig

from sftcli.config import ModelConfig
from sftcli.model import embedded_minilm_dir, load_tokenizer, resolve_max_length


def _encoder(path: Path, *, st_limit: int | None = None, tok_limit: int | None = None, positions: int = 128) -> Path:
    """A tiny random BERT directory with the embedded tokenizer; `st_limit`: a sentence_bert_config.json
    stating max_seq_length; `tok_limit`: the tokenizer's model_max_length (None: the sentinel of none)."""
    tok = load_tokenizer(ModelConfig(source="tiny"))
    tok.model_max_length = tok_limit if tok_limit is not None else int(1e30)
    AutoModel.from_config(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=positions)).save_pretrained(path)
    tok.save_pretrained(path)
    if st_limit is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": st_limit,
                                                                    "do_lower_case": False}))
    return path


@pytest.mark.parametrize(("files", "expected", "source"), [
    ({"st_limit": 40, "tok_limit": 512}, 40, "max_seq_length in"),  # sentence-transformers' own limit first
    ({"tok_limit": 96}, 96, "model_max_length in"),  # a plain encoder: its tokenizer's
    ({"tok_limit": 512, "positions": 64}, 64, "max_position_embeddings in"),  # never past the positions
    ({}, 128, "states no limit"),  # none stated: the key's default
])
def test_auto_reads_the_encoder_limit(tmp_path: Path, files: dict, expected: int, source: str) -> None:
    where = _encoder(tmp_path / "enc", **files)
    tokens, why = resolve_max_length(ModelConfig(source="hf", name_or_path=str(where), max_length="auto"))
    assert tokens == expected
    assert source in why


def test_a_number_is_kept_and_the_embedded_model_reads_256() -> None:
    assert resolve_max_length(ModelConfig(max_length=64)) == (64, "model.max_length")
    tokens, why = resolve_max_length(ModelConfig(max_length="auto"))
    # all-MiniLM-L6-v2 states 256 (what SetFit reads), below its tokenizer's 512.
    assert tokens == 256
    assert str(embedded_minilm_dir() / "sentence_bert_config.json") in why
    assert resolve_max_length(ModelConfig(source="tiny", max_length="auto"))[0] == 128


def test_auto_is_recorded_as_the_number_and_resumes(sft, tmp_path: Path, data_dir: Path) -> None:
    where = _encoder(tmp_path / "enc", st_limit=40)
    args = [*[a for a in FAST if a != "model=tiny"], *data_args(data_dir), "model=hf",
            f"model.name_or_path={where}", "model.max_length=auto", "trainer.max_steps=2", "trainer.save_every=1",
            "run_name=r"]
    first = sft("train", *args, "trainer.max_steps=1", merge_stderr=True)
    assert first.returncode == 0, first.stdout
    assert "texts cut at 40 tokens" in first.stdout
    saved = yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())
    assert saved["model"]["max_length"] == 40
    # The same command line resumes: `auto` resolves to the number the checkpoint recorded.
    again = sft("train", *args, "resume=auto", merge_stderr=True)
    assert again.returncode == 0, again.stdout
    assert "config differs" not in again.stdout
    assert yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())["model"]["max_length"] == 40


def test_a_length_out_of_range_names_the_range(sft) -> None:
    bad = sft("train", "model=tiny", "model.max_length=4")
    assert bad.returncode == 2
    assert "model.max_length: must be in [8, 65536]" in bad.stderr
    assert "expected int" not in bad.stderr
