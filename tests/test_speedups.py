"""The training loop's speed levers compute what the plain path computes: the first-token last layer,
dropout masks from integers, the row-cleared embedding gradient, and clipping folded into fused AdamW."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from sftcli.config import ModelConfig
from sftcli.embedgrad import EmbeddingGradRows, embedding_grad_rows_possible
from sftcli.model import (
    IntMaskDropout,
    build_model,
    cls_only_possible,
    enable_cls_only_last_layer,
    use_int_mask_dropout,
)

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int_mask_dropout_drops_at_rate_p_and_keeps_the_mean(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    drop = IntMaskDropout(p).train()
    x = torch.ones(n, dtype=dtype, requires_grad=True)
    y = drop(x)
    kept = (y != 0).double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma
    # Kept values are 1 / (1 - p) as the dtype rounds x / (1 - p), like nn.Dropout's.
    assert set(torch.unique(y.detach()).tolist()) == {0.0, torch.tensor(1 / (1 - p), dtype=dtype).item()}
    y.sum().backward()
    assert torch.equal(x.grad != 0, y.detach() != 0)  # the backward uses the forward's mask
    assert y.dtype == dtype


def test_int_mask_dropout_is_the_identity_in_eval_mode_and_reproducible_under_a_seed() -> None:
    x = torch.randn(64, 32)
    drop = IntMaskDropout(0.3)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(IntMaskDropout(0.0).train()(x), x)
    drop.train()
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), a)
    assert not torch.equal(drop(x), a)


def test_int_mask_dropout_replaces_every_plain_dropout_and_nothing_else() -> None:
    model = build_model(ModelConfig(source="tiny", dropout=0.1), LABELS, 0)
    before = sum(type(m) is torch.nn.Dropout for m in model.modules())
    keys = list(model.state_dict())
    assert use_int_mask_dropout(model) == before > 0
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, IntMaskDropout))
    assert list(model.state_dict()) == keys


def test_row_cleared_embedding_gradient_equals_the_dense_one_step_after_step() -> None:
    cfg = ModelConfig(source="tiny", dropout=0.0)
    plain, rows = build_model(cfg, LABELS, 0), build_model(cfg, LABELS, 0)
    assert embedding_grad_rows_possible(rows) is None
    keeper = EmbeddingGradRows(rows.get_input_embeddings())
    weight = rows.get_input_embeddings().weight
    for step in range(3):
        batch = _batch()
        batch["input_ids"] = batch["input_ids"] + 50 * step  # other rows each step
        for m in (plain, rows):
            m.train()
            m(**batch).logits.sum().backward()
        dense = plain.get_input_embeddings().weight.grad
        assert weight.grad is keeper.buffer and not weight.grad.is_sparse
        assert torch.equal(weight.grad, dense)
        assert dense.abs().sum() > 0
        torch.testing.assert_close(keeper.norm(), dense.norm())
        plain.zero_grad(set_to_none=True)
        rows.zero_grad(set_to_none=True)
        if step == 0:
            keeper.clear()  # the loop's way; at step 1 the next forward notices the None gradient itself
    assert torch.count_nonzero(keeper.buffer) > 0  # step 2's rows wait for the next clear
    keeper.clear()
    assert torch.count_nonzero(keeper.buffer) == 0 and weight.grad is keeper.buffer


def test_row_cleared_embedding_gradient_under_ddp_reads_and_clears_everything() -> None:
    model = build_model(ModelConfig(source="tiny"), LABELS, 0)
    keeper = EmbeddingGradRows(model.get_input_embeddings(), distributed=True)
    keeper.buffer[7] = 1.0  # a row only another rank's batch used
    assert keeper.rows() is None
    assert keeper.norm().item() == pytest.approx(keeper.buffer.norm().item())
    keeper.clear()
    assert torch.count_nonzero(keeper.buffer) == 0


def test_row_cleared_embedding_gradient_is_refused_for_a_shared_weight() -> None:
    model = build_model(ModelConfig(source="tiny"), LABELS, 0)
    model.tied_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    model.tied_head.weight = model.get_input_embeddings().weight
    assert "shared" in (embedding_grad_rows_possible(model) or "")


@pytest.fixture
def trainer(tmp_path, cache_dir, monkeypatch):
    """An in-process Trainer on the tiny model with a small clipping norm, so clipping is active."""
    from hydra import compose, initialize_config_dir

    from sftcli import dist
    from sftcli.cli import config_dir
    from sftcli.config import parse_train
    from sftcli.trainer import Trainer

    monkeypatch.setenv("SFT_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    overrides = [a for a in TINY if not a.startswith("trainer.log_every")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="train"):
        cfg = parse_train(compose(config_name="train", overrides=[*overrides, "trainer.progress=none",
                                                                   "optim.max_grad_norm=0.01", "model.dropout=0"]))
    t = Trainer(cfg, tmp_path / "run", dist.DistEnv())
    (tmp_path / "run").mkdir()
    t.setup()
    return t


def test_clipping_inside_fused_adamw_matches_clip_grad_norm(trainer) -> None:
    assert trainer.optimizer.defaults.get("fused")
    params = [p for _, p in trainer._named_parameters()]
    start = [p.detach().clone() for p in params]
    # The same groups, lr, betas, decay and fused kernel, on copies of the weights.
    reference = torch.optim.AdamW([{**g, "params": [p.detach().clone().requires_grad_(True) for p in g["params"]]}
                                   for g in trainer.optimizer.param_groups])
    ref_params = [p for g in reference.param_groups for p in g["params"]]
    order = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
    by_id = dict(zip(order, ref_params, strict=True))
    for _ in range(3):
        trainer._forward_backward("sup")
        for p in params:
            by_id[id(p)].grad = p.grad.detach().clone()
        norm = trainer._clip_gradients()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_params, 0.01)
        assert norm > 0.01  # clipping was active
        torch.testing.assert_close(norm, ref_norm)
        trainer._optimizer_step()
        reference.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        for p in params:  # both optimizers trained the same weights the same way
            torch.testing.assert_close(p.detach(), by_id[id(p)].detach(), rtol=1e-5, atol=1e-7)
            by_id[id(p)].data.copy_(p.detach())  # the next step's forward runs on the trainer's weights
    assert any(not torch.equal(p, s) for p, s in zip(params, start, strict=True))


def test_without_clipping_the_reported_norm_is_the_dense_norm_and_gradients_stay(trainer) -> None:
    trainer.cfg.optim.max_grad_norm = None
    trainer._forward_backward("sup")
    params = [p for _, p in trainer._named_parameters() if p.grad is not None]
    before = [p.grad.clone() for p in params]
    norm = trainer._clip_gradients()
    torch.testing.assert_close(norm, torch.stack([g.norm() for g in before]).norm())
    assert trainer.clip_scale is None
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before, strict=True))
