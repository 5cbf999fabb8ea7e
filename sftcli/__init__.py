"""sft: semi-supervised fine-tuning of text encoders (L = L_sup + lambda * L_con)."""

__version__ = "0.1.0"
