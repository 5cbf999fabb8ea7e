"""The speed levers compute what the plain path computes: the first-token last layer."""

from __future__ import annotations

import pytest
import torch

from sftcli.config import ModelConfig
from sftcli.model import build_model, cls_only_possible, enable_cls_only_last_layer

LABELS = ["a", "b", "c"]


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _pair(attn: str = "sdpa", dropout: float | None = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = ModelConfig(source="tiny", max_length=64, dropout=dropout)
    plain, fast = (build_model(cfg, LABELS, 0) for _ in range(2))
    for m in (plain, fast):
        m.config._attn_implementation = attn
    assert cls_only_possible(fast) is None
    enable_cls_only_last_layer(fast)
    return plain, fast


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_first_token_last_layer_gives_the_same_logits_and_gradients(attn: str) -> None:
    torch.manual_seed(0)
    plain, fast = _pair(attn)
    plain.train(), fast.train()  # dropout 0: train mode is deterministic
    batch = _batch()
    logits_plain, logits_fast = plain(**batch).logits, fast(**batch).logits
    torch.testing.assert_close(logits_fast, logits_plain, rtol=0, atol=1e-6)
    (logits_plain * torch.arange(3.0)).sum().backward()
    (logits_fast * torch.arange(3.0)).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_first_token_last_layer_skips_the_other_rows_but_not_when_hidden_states_are_asked_for() -> None:
    plain, fast = _pair()
    fast.eval()
    seen: list[tuple[int, ...]] = []
    fast.base_model.encoder.layer[-1].output.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    batch = _batch()
    fast(**batch)
    assert seen[-1] == (4, 1, fast.config.hidden_size)  # the feed-forward block ran for one row per text
    full = fast(**batch, output_hidden_states=True)
    assert seen[-1] == (4, 11, fast.config.hidden_size)
    assert full.hidden_states[-1].shape == (4, 11, fast.config.hidden_size)
    torch.testing.assert_close(full.hidden_states[-1], plain.eval()(**batch, output_hidden_states=True).hidden_states[-1])


def test_first_token_last_layer_is_refused_where_the_head_reads_every_token() -> None:
    model = build_model(ModelConfig(source="tiny", head_pooling="mean"), LABELS, 0)
    assert "head_pooling=mean" in (cls_only_possible(model) or "")
    model = build_model(ModelConfig(source="tiny"), LABELS, 0)
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in (cls_only_possible(model) or "")


def test_first_token_last_layer_keeps_the_checkpoint_format(tmp_path) -> None:
    plain, fast = _pair()
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
