"""model.head_pooling: sft's pooled head (mean, cls, max) on any encoder AutoModel builds, in training and
after loading a checkpoint; `auto` reads a sentence-transformers directory's own pooling; checkpoints of
earlier versions keep loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig

from sftcli.config import ModelConfig
from sftcli.errors import ModelError
from sftcli.model import (
    build_model,
    embedded_minilm_dir,
    head_config,
    head_pooling_of,
    load_checkpoint_model,
    load_tokenizer,
    resolve_head_pooling,
)
from sftcli.modeling_sft import SftEncoderForSequenceClassification
from sftcli.modeling_sft_bert import SftBertConfig, SftBertForSequenceClassification

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000,
             max_position_embeddings=128)
# A tiny random config of each encoder family transformers ships that users bring for classification.
FAMILIES = {
    "bert": SMALL, "roberta": SMALL, "xlm-roberta": SMALL, "mpnet": SMALL, "electra": {**SMALL, "embedding_size": 32},
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=1000, max_position_embeddings=128),
    "deberta-v2": {**SMALL, "relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"]},
    "modernbert": {**SMALL, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1,
                   "sep_token_id": 2, "global_attn_every_n_layers": 1},
}


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[101, 2054, 2003, 1037, 3231, 102], [101, 2129, 2116, 102, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_mean_head_reads_masked_mean_of_last_states() -> None:
    model = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b", "c"], seed=0).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        # The padded second text alone, without its padding: the same logits.
        alone = model(input_ids=batch["input_ids"][1:, :4], attention_mask=batch["attention_mask"][1:, :4]).logits
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.allclose(out.logits[1], alone[0], atol=1e-5)
    # The default head of a plain encoder (auto: BERT's CLS pooler) reads something else.
    default = build_model(ModelConfig(source="tiny"), ["a", "b", "c"], seed=0).eval()
    assert head_pooling_of(default) == "pooler"
    with torch.no_grad():
        assert not torch.allclose(default(**batch).logits, out.logits, atol=1e-3)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_cls_and_max_heads_read_what_they_name(pooling: str) -> None:
    model = build_model(ModelConfig(source="tiny", head_pooling=pooling), ["a", "b"], seed=0).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:  # the max over the non-pad tokens only
            pooled = torch.stack([hidden[0].max(0).values, hidden[1, :4].max(0).values])
        alone = model(input_ids=batch["input_ids"][1:, :4], attention_mask=batch["attention_mask"][1:, :4]).logits
    assert torch.allclose(out.logits, model.classifier(pooled), atol=1e-5)
    assert torch.allclose(out.logits[1], alone[0], atol=1e-5)


def test_pooled_head_survives_a_checkpoint(tmp_path: Path) -> None:
    model = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b"], seed=1).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "modeling_sft.py").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["encoder"]["model_type"] == "bert"
    loaded = load_checkpoint_model(tmp_path).eval()
    assert isinstance(loaded, SftEncoderForSequenceClassification) and loaded.base_model.pooler is None
    with torch.no_grad():
        assert torch.allclose(model(**_batch()).logits, loaded(**_batch()).logits, atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_encoder_family_takes_the_pooled_head(tmp_path: Path, family: str) -> None:
    config = AutoConfig.for_model(family, **FAMILIES[family], id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    ids = torch.tensor([[5, 10, 11, 12, 6], [5, 13, 6, 0, 0]])
    mask = (ids != 0).long()
    for pooling in ("mean", "cls", "max"):
        model = SftEncoderForSequenceClassification(head_config(config, pooling)).eval()
        with torch.no_grad():
            both = model(input_ids=ids, attention_mask=mask).logits
            alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
        assert torch.allclose(both[1], alone[0], atol=1e-5), pooling  # padding changes nothing
    model.save_pretrained(tmp_path)
    loaded = load_checkpoint_model(tmp_path).eval()
    assert type(loaded.base_model).__name__ == type(AutoModel.from_config(config)).__name__
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits, both, atol=1e-6)


def _local_encoder(path: Path, pooling: dict[str, bool] | None) -> Path:
    """A plain transformers encoder directory (tiny, random) with the embedded model's tokenizer; with
    `pooling`, a sentence-transformers directory whose Pooling module has those modes."""
    tok = load_tokenizer(ModelConfig(source="tiny"))
    AutoModel.from_config(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64)).save_pretrained(path)
    tok.save_pretrained(path)
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir()
        modes = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                 **pooling}
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return path


@pytest.mark.parametrize(("modes", "expected"), [
    ({"pooling_mode_cls_token": True}, "cls"),
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_max_tokens": True}, "max"),
    (None, "pooler"),  # a plain transformers encoder: its own head, as before `auto`
])
def test_auto_reads_a_sentence_transformers_pooling(tmp_path: Path, modes: dict | None, expected: str) -> None:
    where = _local_encoder(tmp_path / "enc", modes)
    cfg = ModelConfig(source="hf", name_or_path=str(where))
    assert cfg.head_pooling == "auto"
    assert resolve_head_pooling(cfg) == expected
    assert head_pooling_of(build_model(cfg, ["a", "b"], seed=0)) == expected


def test_auto_refuses_a_pooling_the_head_does_not_have(tmp_path: Path) -> None:
    where = _local_encoder(tmp_path / "enc", {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ModelError, match=r"1_Pooling/config.json asks for pooling_mode_weightedmean_tokens.*"
                                         r"set model.head_pooling"):
        resolve_head_pooling(ModelConfig(source="hf", name_or_path=str(where)))


def test_the_embedded_model_reads_its_mean_pooling_under_auto() -> None:
    cfg = ModelConfig()
    assert (cfg.source, cfg.head_pooling) == ("minilm", "auto")
    assert resolve_head_pooling(cfg) == "mean"  # all-MiniLM-L6-v2's 1_Pooling/config.json
    assert (embedded_minilm_dir() / "1_Pooling" / "config.json").is_file()


def test_an_sft_model_starts_a_new_run_with_its_encoder(tmp_path: Path) -> None:
    # model=hf model.name_or_path=RUN/model: the trained encoder, a fresh head for the new labels.
    first = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b"], seed=1)
    first.save_pretrained(tmp_path)
    load_tokenizer(ModelConfig(source="tiny")).save_pretrained(tmp_path)
    again = build_model(ModelConfig(source="hf", name_or_path=str(tmp_path), head_pooling="cls"), ["x", "y", "z"], 0)
    assert head_pooling_of(again) == "cls" and again.config.num_labels == 3
    for (name, a), b in zip(first.encoder.state_dict().items(), again.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("version", ["sft_encoder", "sft_bert"])
def test_model_dropout_reaches_the_encoder_of_an_sft_model_started_from(tmp_path: Path, version: str) -> None:
    if version == "sft_encoder":
        first = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b"], seed=1)
    else:  # an earlier version's BERT-only class: its config is flat
        first = SftBertForSequenceClassification(SftBertConfig(**BertConfig(
            vocab_size=len(load_tokenizer(ModelConfig(source="tiny"))), hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, num_labels=2).to_dict()))
    first.save_pretrained(tmp_path)
    load_tokenizer(ModelConfig(source="tiny")).save_pretrained(tmp_path)
    again = build_model(ModelConfig(source="hf", name_or_path=str(tmp_path), head_pooling="mean", dropout=0.3),
                        ["x", "y"], 0)
    rates = {m.p for m in again.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}, rates


def test_checkpoints_of_earlier_versions_load_with_their_mean_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    old = SftBertForSequenceClassification(SftBertConfig(**config.to_dict())).eval()
    with torch.no_grad():
        expected = old(**_batch_small()).logits
    # The BERT-only class (model type sft_bert, modeling_sft_bert.py beside the weights).
    old.save_pretrained(tmp_path / "v2")
    # And the earliest: a stock BERT config.json marked sft_head_pooling=mean.
    old.save_pretrained(tmp_path / "v1")
    data = json.loads((tmp_path / "v1" / "config.json").read_text())
    data.update(model_type="bert", architectures=["BertForSequenceClassification"], sft_head_pooling="mean")
    data.pop("auto_map")
    (tmp_path / "v1" / "config.json").write_text(json.dumps(data))
    (tmp_path / "v1" / "modeling_sft_bert.py").unlink()
    for version in ("v1", "v2"):
        loaded = load_checkpoint_model(tmp_path / version).eval()
        assert isinstance(loaded, SftBertForSequenceClassification) and head_pooling_of(loaded) == "mean"
        with torch.no_grad():
            assert torch.allclose(loaded(**_batch_small()).logits, expected, atol=1e-6), version


def _batch_small() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 20, 30, 2], [1, 40, 2, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}
