"""sftcli.speedups: each lever computes what the plain path computes, applies only where it was measured
(CPU, the model types and library versions its tests run), and undoes what it sets process-wide."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys

import pytest
import torch

from sftcli import speedups
from sftcli.config import ModelConfig, TrainerConfig
from sftcli.model import build_model
from sftcli.speedups import _gate, cls_only, malloc, sdpa_math

LABELS = ["a", "b", "c"]
CPU = torch.device("cpu")


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _tiny(attn: str = "sdpa", dropout: float | None = 0.0, **kw) -> torch.nn.Module:
    model = build_model(ModelConfig(source="tiny", max_length=64, dropout=dropout, **kw), LABELS, 0)
    model.config._attn_implementation = attn
    return model


def _patched(model: torch.nn.Module) -> bool:
    return any("forward" in vars(m) for m in model.modules())


def _pair(attn: str = "sdpa") -> tuple[torch.nn.Module, torch.nn.Module]:
    plain, fast = _tiny(attn), _tiny(attn)
    notes = speedups.apply_to_model(fast, TrainerConfig(), CPU, "fp32")
    assert not any("cls_only" in n for n in notes), notes
    assert _patched(fast) and not _patched(plain)
    return plain, fast


# ----------------------------------------------------------------------------------------------------
# cls_only: the last layer for the first token alone


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cls_only_gives_the_plain_models_logits_and_every_gradient(attn: str) -> None:
    plain, fast = _pair(attn)
    plain.train(), fast.train()  # dropout 0: train mode is deterministic
    batch = _batch()
    logits_plain, logits_fast = plain(**batch).logits, fast(**batch).logits
    torch.testing.assert_close(logits_fast, logits_plain, rtol=0, atol=1e-6)
    (logits_plain * torch.arange(3.0)).sum().backward()
    (logits_fast * torch.arange(3.0)).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6, msg=name)


def test_cls_only_skips_the_other_rows_but_not_when_hidden_states_are_asked_for() -> None:
    plain, fast = _pair()
    fast.eval()
    seen: list[tuple[int, ...]] = []
    fast.base_model.encoder.layer[-1].output.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    batch = _batch()
    fast(**batch)
    assert seen[-1] == (4, 1, fast.config.hidden_size)  # the feed-forward block ran for one row per text
    full = fast(**batch, output_hidden_states=True)
    assert seen[-1] == (4, 11, fast.config.hidden_size)
    torch.testing.assert_close(full.hidden_states[-1], plain.eval()(**batch, output_hidden_states=True).hidden_states[-1])
    # The encoder called on its own (the frozen teacher's way) is not the classifier: the whole layer.
    assert fast.base_model(**batch).last_hidden_state.shape == (4, 11, fast.config.hidden_size)


def test_cls_only_leaves_the_full_layer_after_a_failed_forward() -> None:
    _, fast = _pair()
    with pytest.raises(IndexError):
        fast(input_ids=torch.full((2, 5), 10**6))  # an id beyond the vocabulary
    assert fast.base_model(**_batch()).last_hidden_state.shape[1] == 11


def test_cls_only_on_a_deep_copy_runs_on_the_copys_weights() -> None:
    plain, fast = _pair()
    twin, plain_twin = copy.deepcopy(fast), copy.deepcopy(plain)
    for model in (twin, plain_twin):  # the copies drift away from the originals
        torch.nn.init.normal_(model.base_model.encoder.layer[-1].output.dense.weight, generator=torch.Generator().manual_seed(1))
    batch = _batch()
    torch.testing.assert_close(twin.eval()(**batch).logits, plain_twin.eval()(**batch).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.eval()(**batch).logits, plain.eval()(**batch).logits, rtol=0, atol=1e-6)


def test_cls_only_applied_twice_hooks_once_and_keeps_the_checkpoint_format(tmp_path) -> None:
    plain, fast = _pair()
    hooks = (len(fast._forward_pre_hooks), len(fast._forward_hooks))
    cls_only.apply(fast)
    assert (len(fast._forward_pre_hooks), len(fast._forward_hooks)) == hooks
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()


def _non_bert() -> torch.nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2,
                                                                hidden_dim=32, num_labels=3))


def _bert_token_classifier() -> torch.nn.Module:
    from transformers import BertConfig, BertForTokenClassification

    return BertForTokenClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32, num_labels=3))


@pytest.mark.parametrize("case,words", [
    ("head_pooling=mean", "model.head_pooling=mean"),
    ("non-BERT model", "DistilBertForSequenceClassification"),
    ("BERT head reading every token", "BertForTokenClassification"),
    ("flash attention", "flash_attention_2"),
    ("gradient checkpointing", "gradient checkpointing is on"),
    ("device cuda", "device cuda: measured on CPU only"),
    ("torch.compile", "torch.compile is on"),
    ("switched off", "trainer.cls_only_last_layer=false"),
])
def test_cls_only_is_refused_where_it_was_not_tested_or_measured(case: str, words: str) -> None:
    model, tc, device = _tiny(), TrainerConfig(), CPU
    if case == "head_pooling=mean":
        model = _tiny(head_pooling="mean")
    elif case == "non-BERT model":
        model = _non_bert()
    elif case == "BERT head reading every token":
        model = _bert_token_classifier()
    elif case == "flash attention":
        model.config._attn_implementation = "flash_attention_2"
    elif case == "gradient checkpointing":
        # 5.x's later name first (the older one warns there).
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    elif case == "device cuda":
        device = torch.device("cuda")  # the gate alone: no GPU needed
    elif case == "torch.compile":
        tc.compile = True
    else:
        tc.cls_only_last_layer = False
    assert words in (cls_only.why_not(model, device, "bf16", tc) or "")
    notes = speedups.apply_to_model(model, tc, device, "bf16")
    assert any(n.startswith("trainer.cls_only_last_layer does not apply") and words in n for n in notes), notes
    assert not _patched(model)


@pytest.mark.parametrize("version,ok", [("5.0.0", True), ("5.24.0", True), ("5.99.1", True), ("4.57.6", False),
                                        ("6.0.0", False), ("6.0.0.dev0", False)])
def test_cls_only_applies_only_to_the_transformers_line_it_is_tested_with(monkeypatch, version: str, ok: bool) -> None:
    assert (_gate.transformers_outside_tested(version) is None) == ok
    import transformers

    monkeypatch.setattr(transformers, "__version__", version)
    why = cls_only.why_not(_tiny(), CPU, "fp32", TrainerConfig())
    assert (why is None) == ok
    if not ok:
        assert why == f"transformers {version} (the patch is tested with >=5.0,<6)"


def test_cls_only_is_refused_when_a_private_name_it_reads_is_gone(monkeypatch) -> None:
    from transformers.models.bert import modeling_bert

    monkeypatch.delattr(modeling_bert, "eager_attention_forward")
    assert "modeling_bert.eager_attention_forward" in (cls_only.why_not(_tiny(), CPU, "fp32", TrainerConfig()) or "")


# ----------------------------------------------------------------------------------------------------
# sdpa_math: SDPA's math backend for short bf16 batches on CPU


def _attention_ops(model: torch.nn.Module, context: contextlib.AbstractContextManager) -> set[str]:
    from torch.profiler import profile

    with profile() as prof, torch.autocast("cpu", dtype=torch.bfloat16), context:
        model(**_batch()).logits.float().sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_sdpa_math_picks_the_math_kernel_only_on_cpu_in_bf16_for_short_batches() -> None:
    model = _tiny(dropout=0.0).train()  # attention dropout 0: where SDPA would pick its flash kernel on CPU
    tc = TrainerConfig(sdpa_math_max_length=11)
    short = _attention_ops(model, speedups.attention_context(CPU, "bf16", 11, tc))
    assert "aten::_scaled_dot_product_attention_math" in short and not any("flash" in k for k in short)
    assert any("flash" in k for k in _attention_ops(model, speedups.attention_context(CPU, "bf16", 12, tc)))
    for device, precision, length, max_length in ((torch.device("cuda"), "bf16", 11, 128), ("cuda:0", "bf16", 11, 128),
                                                  (CPU, "fp32", 11, 128), (CPU, "fp16", 11, 128), (CPU, "bf16", 11, 0)):
        ctx = speedups.attention_context(device, precision, length, TrainerConfig(sdpa_math_max_length=max_length))
        assert isinstance(ctx, contextlib.nullcontext), (device, precision, length, max_length)
    assert "does not call SDPA" in (sdpa_math.why_not(_tiny("eager"), CPU, "bf16", tc) or "")


def test_sdpa_math_changes_nothing_where_attention_dropout_already_picks_the_math_backend() -> None:
    def run(context: contextlib.AbstractContextManager) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = _tiny(dropout=0.1).train()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16), context:
            logits = model(**_batch()).logits.float()
        logits.sum().backward()
        return logits.detach(), [p.grad for p in model.parameters()]

    tuned = run(speedups.attention_context(CPU, "bf16", 11, TrainerConfig()))
    plain = run(contextlib.nullcontext())
    assert torch.equal(tuned[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(tuned[1], plain[1], strict=True))


# ----------------------------------------------------------------------------------------------------
# malloc: glibc keeps large blocks in the heap while training, and the settings before come back

# Minor page faults of 10 allocate-fill-free cycles of a 64 MB tensor (above glibc's 32 MB mmap ceiling,
# like the embedding gradient): before, inside the context, inside a nested context after it ended,
# and after the context with a tensor larger than the whole heap (so that no free chunk the heap kept can
# serve it). In a subprocess: malloc settings are process-wide.
PROBE = """
import ctypes, json, resource, torch
from sftcli import speedups
from sftcli.config import TrainerConfig
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def faults(mb=64):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        t = torch.zeros(mb * 1024 * 1024 // 4)  # fp32
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
model = torch.nn.Linear(4096, 4096)  # a 64 MB weight
out = {"default": faults()}
with speedups.malloc_tuning(model, TrainerConfig()) as ok:
    out["tuned_ok"] = ok
    faults()  # the first cycle grows the heap once
    out["tuned"] = faults()
    with speedups.malloc_tuning(model, TrainerConfig()):
        pass
    out["after_nested"] = faults()
beyond_heap = (libc.mallinfo2().arena >> 20) + 64
out["restored"], out["restored_pages"] = faults(beyond_heap), 10 * (beyond_heap << 20) // 4096
with speedups.malloc_tuning(model, TrainerConfig(malloc_tuning=False)) as nothing:
    out["off"] = nothing
print(json.dumps(out))
"""


@pytest.mark.skipif(malloc._libc() is None or not hasattr(malloc._libc(), "mallinfo2"),
                    reason="not glibc 2.33+: the settings do not apply, or the heap size cannot be read")
def test_malloc_tuning_stops_page_faults_while_training_and_restores_on_exit() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    check=True).stdout)
    pages = 10 * (64 << 20) // 4096  # every cycle faults in all 16k pages of a fresh mmap
    assert out["tuned_ok"] is True and out["off"] is None
    assert out["default"] > 0.5 * pages
    assert out["tuned"] < 0.01 * pages
    assert out["after_nested"] < 0.01 * pages  # the inner block restored the outer block's settings
    assert out["restored"] > 0.5 * out["restored_pages"]  # large blocks come from mmap again


# The process-wide form benchmarks/bench.py uses: tuned, then glibc's steady state for the next arm.
PROBE_PROCESS_WIDE = """
import json, resource, torch
from sftcli.speedups import malloc
def faults(mb=64):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        t = torch.zeros(mb * 1024 * 1024 // 4)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
out = {"tuned_ok": malloc.keep_large_blocks(64 << 20)}
faults()
out["tuned"] = faults()
out["undone_ok"] = malloc.glibc_steady_state()
out["undone"] = faults(128)
print(json.dumps(out))
"""


@pytest.mark.skipif(malloc._libc() is None, reason="not glibc: the settings do not apply")
def test_keep_large_blocks_holds_until_glibc_steady_state() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE_PROCESS_WIDE], capture_output=True, text=True,
                                    check=True).stdout)
    pages = 10 * (64 << 20) // 4096
    assert out["tuned_ok"] and out["undone_ok"]
    assert out["tuned"] < 0.01 * pages
    assert out["undone"] > 0.5 * 2 * pages


def test_malloc_tuning_is_off_on_cuda_and_when_switched_off() -> None:
    model = torch.nn.Linear(2, 2)
    assert "measured on CPU only" in (malloc.why_not(model, torch.device("cuda"), "bf16", TrainerConfig()) or "")
    assert isinstance(speedups.malloc_tuning(model, TrainerConfig(), torch.device("cuda")), contextlib.nullcontext)
    assert isinstance(speedups.malloc_tuning(model, TrainerConfig(malloc_tuning=False)), contextlib.nullcontext)


def test_malloc_restores_what_the_process_was_started_with() -> None:
    env = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1048576",
           "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0x200000:glibc.malloc.mmap_threshold=oops"}
    assert malloc.environment_settings(env) == {malloc.M_MMAP_MAX: 0, malloc.M_TRIM_THRESHOLD: 2 << 20}
    assert malloc.environment_settings({}) == {}


def test_apply_to_model_notes_every_lever_that_is_off_on_cuda() -> None:
    notes = speedups.apply_to_model(_tiny(), TrainerConfig(), torch.device("cuda"), "bf16")
    assert [n.split(" ")[0] for n in notes] == ["trainer.cls_only_last_layer", "trainer.sdpa_math_max_length",
                                                "trainer.malloc_tuning"]
    assert all("measured on CPU only" in n for n in notes)
