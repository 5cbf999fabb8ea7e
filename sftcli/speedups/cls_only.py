"""The last encoder layer for the first token alone (``trainer.cls_only_last_layer``).

BERT's sequence classifier reads the last layer at the first token (CLS) alone, through its pooler. That
token's output needs every token's keys and values from the layer below, but not the other tokens'
queries, attention output, feed-forward block and LayerNorms: on MiniLM (6 layers, TREC-6 questions of
about 13 tokens) that is about an eighth of the model's FLOPs, forward and backward. The first-token
output is the same computation either way; only rows that no loss or prediction reads are skipped.
Measured 1.10x the non-pad tokens/s (docs/benchmark.md: bf16, MiniLM, batch 32, 2-core CPU).

A forward that asks for hidden states or attentions (the contrastive term reads the whole last layer)
gets the full layer, and so does any call that does not go through the classifier's own forward. The
layer keeps its parameters and names, so checkpoints do not change.

Where it applies (:func:`why_not`): transformers' ``BertForSequenceClassification`` (not sft's
mean-pooling class, whose head reads every token), encoder only, unchunked feed-forward, ``sdpa`` or
``eager`` attention, without gradient checkpointing, eager mode (not under torch.compile), on CPU (never
measured on CUDA), and transformers 5.x (tested on 5.0.0 and 5.24): it reads the private names
``ALL_ATTENTION_FUNCTIONS`` and ``eager_attention_forward`` of ``transformers.models.bert.modeling_bert``,
``BertLayer.feed_forward_chunk`` and the attributes of ``BertSelfAttention``, all checked to be there
before the layer is patched.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from sftcli.speedups._gate import transformers_outside_tested, unmeasured_device

ATTENTION = ("sdpa", "eager")
# Attributes of BertSelfAttention the first-token layer reads.
_SELF_ATTENTION_NAMES = ("query", "key", "value", "dropout", "attention_head_size", "scaling", "config")
_ENABLED = "_sft_cls_only_enabled"  # on the last layer: patched
_ACTIVE = "_sft_cls_only_active"  # on the last layer: the classifier's current forward needs logits only


def why_not(model: Any, device: torch.device | str, precision: str, tc: Any) -> str | None:
    """Why the last layer cannot run for the first token alone here, or None when it can.

    `precision` does not matter (the same rows are skipped in every dtype); it is taken so that every
    speed-up is asked the same way."""
    if not tc.cls_only_last_layer:
        return "trainer.cls_only_last_layer=false"
    if tc.compile:
        return "torch.compile is on"
    why = unmeasured_device(device) or transformers_outside_tested()
    if why:
        return why
    if model is None:
        return "no model"
    return model_why_not(model)


def model_why_not(model: Any) -> str | None:
    """The model's part of :func:`why_not`: class, attention implementation, layer structure."""
    from transformers import BertForSequenceClassification

    from sftcli.model import head_pooling_of

    pooling = head_pooling_of(model)
    if pooling != "pooler":
        return f"the classifier is sft's pooled head (model.head_pooling={pooling}), not BERT's own"
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if type(model) is not BertForSequenceClassification:
        return (f"model {type(model).__name__} (model type {model_type!r}): only BERT's sequence classifier, "
                "which reads the first token alone, is covered")
    if getattr(config, "_attn_implementation", None) not in ATTENTION:
        return f"attention implementation {config._attn_implementation!r}"
    if config.is_decoder or config.add_cross_attention or getattr(config, "chunk_size_feed_forward", 0):
        return "a decoder, cross-attention or chunked feed-forward configuration"
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):  # transformers' own test
        # The backward's recomputation runs after the forward has ended, with the full layer.
        return "gradient checkpointing is on"
    return _missing_internals(model)


def _missing_internals(model: Any) -> str | None:
    from transformers.models.bert import modeling_bert

    missing = [f"modeling_bert.{n}" for n in ("ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")
               if not hasattr(modeling_bert, n)]
    layer = model.base_model.encoder.layer[-1]
    if not hasattr(layer, "feed_forward_chunk"):
        missing.append("BertLayer.feed_forward_chunk")
    sa = getattr(getattr(layer, "attention", None), "self", None)
    missing += [f"BertSelfAttention.{n}" for n in _SELF_ATTENTION_NAMES if not hasattr(sa, n)]
    if not hasattr(getattr(layer, "attention", None), "output"):
        missing.append("BertAttention.output")
    return f"this transformers lacks {', '.join(missing)}" if missing else None


def apply(model: Any) -> None:
    """Run the model's last encoder layer for the first token alone whenever the classifier's forward
    asks for logits only. Check :func:`why_not` first. Applying it twice changes nothing.

    The patch lives on the model and its last layer (bound methods and module hooks, no closures), so a
    ``copy.deepcopy`` of the model carries a patch that runs on the copy's own weights."""
    layer = model.base_model.encoder.layer[-1]
    if getattr(layer, _ENABLED, False):
        return
    setattr(layer, _ACTIVE, False)
    layer.forward = types.MethodType(_layer_forward, layer)
    model.register_forward_pre_hook(_choose, with_kwargs=True)
    # always_call: an exception inside the forward still leaves the layer in full mode.
    model.register_forward_hook(_reset, always_call=True)
    setattr(layer, _ENABLED, True)


def _choose(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    config = model.config
    wants_all = (kwargs.get("output_hidden_states") or kwargs.get("output_attentions")
                 or config.output_hidden_states or config.output_attentions)
    setattr(model.base_model.encoder.layer[-1], _ACTIVE, not wants_all)


def _reset(model: torch.nn.Module, args: tuple, output: Any) -> None:
    setattr(model.base_model.encoder.layer[-1], _ACTIVE, False)


def _layer_forward(layer: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   *args: Any, **kwargs: Any) -> torch.Tensor:
    if not getattr(layer, _ACTIVE):
        return type(layer).forward(layer, hidden_states, attention_mask, *args, **kwargs)
    return _first_token_layer(layer, hidden_states, attention_mask)


def _first_token_layer(layer: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """A BertLayer's output at position 0 only, shape [batch, 1, hidden]: BertSelfAttention's forward
    with one query row, then the layer's attention output and feed-forward block on that row."""
    from transformers.models.bert import modeling_bert

    sa = layer.attention.self
    first = hidden[:, :1]
    batch, length, _ = hidden.shape
    head = sa.attention_head_size
    query = sa.query(first).view(batch, 1, -1, head).transpose(1, 2)
    key = sa.key(hidden).view(batch, length, -1, head).transpose(1, 2)
    value = sa.value(hidden).view(batch, length, -1, head).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of [batch, 1, queries, keys]
    implementation = sa.config._attn_implementation  # one of ATTENTION
    attend = (modeling_bert.eager_attention_forward if implementation == "eager"
              else modeling_bert.ALL_ATTENTION_FUNCTIONS[implementation])
    context, _ = attend(sa, query, key, value, attention_mask, dropout=sa.dropout.p if sa.training else 0.0,
                        scaling=sa.scaling)
    attention_output = layer.attention.output(context.reshape(batch, 1, -1).contiguous(), first)
    return layer.feed_forward_chunk(attention_output)
