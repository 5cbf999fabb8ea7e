"""A BERT classifier whose head reads the mean of the last hidden states over non-pad tokens.

sft trains with this class when `model.head_pooling=mean`, and transformers copies this file into every
checkpoint and exported model of such a run (`register_for_auto_class`; config.json's `auto_map` names
it). Plain transformers then loads the same head that sft trained:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
    pipeline("text-classification", model=DIR, trust_remote_code=True)

The config's model type is `sft_bert`, not `bert`: without `trust_remote_code=True` transformers refuses
to load the directory instead of building a stock BERT classifier that would read the CLS pooler, a
layer this model does not have, and answer wrongly.

The file imports only torch and transformers: it must work where sft is not installed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class SftBertConfig(BertConfig):
    model_type = "sft_bert"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of `hidden` over the positions where `attention_mask` is 1 (every position without one)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class SftBertForSequenceClassification(BertPreTrainedModel):
    """BertForSequenceClassification with mean pooling in place of the CLS pooler (which it has none of:
    its weights are BERT's encoder plus `classifier`)."""

    config_class = SftBertConfig

    def __init__(self, config: SftBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

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
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        pooled = mean_pool(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


# save_pretrained copies this file into the directory and writes auto_map for these two classes.
SftBertConfig.register_for_auto_class()
SftBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
