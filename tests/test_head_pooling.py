"""model.head_pooling=mean: the classifier reads the mean of the non-pad token states, in training and
after loading a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftcli.config import ModelConfig
from sftcli.errors import ModelError
from sftcli.model import build_model, load_checkpoint_model, mean_head_config
from sftcli.modeling_sft_bert import SftBertForSequenceClassification


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
    # The default head (BERT's CLS pooler) reads something else.
    default = build_model(ModelConfig(source="tiny"), ["a", "b", "c"], seed=0).eval()
    with torch.no_grad():
        assert not torch.allclose(default(**batch).logits, out.logits, atol=1e-3)


def test_mean_head_survives_a_checkpoint(tmp_path: Path) -> None:
    model = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b"], seed=1).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_checkpoint_model(tmp_path).eval()
    assert isinstance(loaded, SftBertForSequenceClassification) and loaded.base_model.pooler is None
    with torch.no_grad():
        assert torch.allclose(model(**_batch()).logits, loaded(**_batch()).logits, atol=1e-6)


def test_mean_head_needs_a_bert_encoder() -> None:
    # The exported class is BERT's encoder with a mean head; another architecture is refused up front
    # rather than exported with a head that plain transformers would rebuild differently.
    from transformers import DistilBertConfig

    with pytest.raises(ModelError, match="model.head_pooling=mean needs a BERT-architecture encoder"):
        mean_head_config(DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2, vocab_size=100))


def test_an_older_mean_checkpoint_loads_with_the_mean_head(tmp_path: Path) -> None:
    # Checkpoints of earlier sft versions: a stock BERT config.json marked sft_head_pooling=mean.
    import json

    model = build_model(ModelConfig(source="tiny", head_pooling="mean"), ["a", "b"], seed=1).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForSequenceClassification"], sft_head_pooling="mean")
    config.pop("auto_map")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_sft_bert.py").unlink()
    loaded = load_checkpoint_model(tmp_path).eval()
    assert isinstance(loaded, SftBertForSequenceClassification)
    with torch.no_grad():
        assert torch.allclose(model(**_batch()).logits, loaded(**_batch()).logits, atol=1e-6)
