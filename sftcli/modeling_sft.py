"""sft's classifier for any encoder: the encoder `AutoModel` builds, a pooling of its last hidden states
(the mean over non-pad tokens, the first token, or the max over non-pad tokens), then one linear layer.

sft trains with this class when `model.head_pooling` is mean, cls or max (or `auto` finds one of them in
a sentence-transformers directory), and transformers copies this file into every checkpoint and exported
model of such a run (`register_for_auto_class`; config.json's `auto_map` names it). Plain transformers
then loads the head that sft trained:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
    pipeline("text-classification", model=DIR, trust_remote_code=True)

config.json holds the encoder's own config under `encoder` (any model type transformers knows: BERT,
RoBERTa, DeBERTa-v2, MPNet, XLM-R, ModernBERT, ...) and the pooling under `pooling`. Its model type is
`sft_encoder`, so without `trust_remote_code=True` transformers refuses the directory instead of building
a stock head that reads a different representation and answers wrongly. `sft export format=onnx` writes
a directory that needs no code at all.

The file imports only torch and transformers: it must work where sft is not installed.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "max")


class SftEncoderConfig(PreTrainedConfig):
    model_type = "sft_encoder"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    pooling: str = "mean"
    classifier_dropout: float | None = None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of `hidden` over the positions where `attention_mask` is 1 (every position without one)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def pool_states(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per text from the last hidden states: `mean`, `cls` (the first token) or `max`."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        if attention_mask is None:
            return hidden.max(1).values
        # A finite floor rather than -inf: the same number in every runtime (an exported graph included).
        pad = attention_mask.unsqueeze(-1) == 0
        return hidden.masked_fill(pad, torch.finfo(hidden.dtype).min).max(1).values
    return mean_pool(hidden, attention_mask)


def encoder_without_pooler(config: PreTrainedConfig) -> dict[str, bool]:
    """`add_pooling_layer=False` for the encoders that build a pooler by default (BERT, RoBERTa, MPNet,
    XLM-R, ...): this head does not read it, and an unused layer would stall DistributedDataParallel."""
    model_class = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}


class SftEncoderForSequenceClassification(PreTrainedModel):
    """Any encoder with a pooled linear head. `encoder`: an encoder already loaded with its weights (sft
    builds it with `AutoModel.from_pretrained`, which knows every family's checkpoint layout); without
    one the encoder is built from `config.encoder`."""

    config_class = SftEncoderConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SftEncoderConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling {config.pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.num_labels = config.num_labels
        self.encoder = encoder if encoder is not None else AutoModel.from_config(
            config.encoder, **encoder_without_pooler(config.encoder))
        inner = config.encoder
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = next((getattr(inner, k) for k in ("classifier_dropout", "hidden_dropout_prob", "dropout",
                                                        "hidden_dropout") if isinstance(getattr(inner, k, None), float)), 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(inner.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The head only: the encoder's modules are initialised by the encoder's own class.
        if module is self.classifier:
            from transformers import initialization as init

            init.normal_(module.weight, mean=0.0, std=getattr(self.config.encoder, "initializer_range", 0.02))
            init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        # Only what the caller gave: some encoders take no token types (DistilBERT, ModernBERT, ...).
        optional = {"token_type_ids": token_type_ids, "position_ids": position_ids}
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                               return_dict=True, **kwargs)
        pooled = pool_states(outputs.last_hidden_state, attention_mask, self.config.pooling)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


# save_pretrained copies this file into the directory and writes auto_map for these two classes.
SftEncoderConfig.register_for_auto_class()
SftEncoderForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
