"""Typed schema of every config group, and the one place that reads raw config keys.

Hydra composes a plain dict; :func:`parse_train` / :func:`parse_eval` check it against the dataclasses
below (unknown keys with a "did you mean", wrong types, out-of-range values: all reported at once) and
return typed objects. Everything after this module works with those objects only.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from sftcli.errors import ConfigError


@dataclass
class ModelConfig:
    source: Literal["minilm", "hf", "tiny"] = "minilm"
    name_or_path: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    pooling: Literal["mean", "cls"] = "mean"
    head_pooling: Literal["pooler", "mean"] = "pooler"
    max_length: int = 128
    dropout: float | None = None
    tiny_hidden_size: int = 32
    tiny_layers: int = 2
    tiny_heads: int = 2

    def check(self, err: _Errors, prefix: str) -> None:
        err.require(self.max_length >= 8, f"{prefix}.max_length", "must be >= 8")
        if self.dropout is not None:
            err.require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "must be in [0, 1)")
        if self.source == "hf":
            err.require(bool(self.name_or_path), f"{prefix}.name_or_path", "is required with model=hf")
        if self.source == "tiny":
            err.require(self.tiny_hidden_size % self.tiny_heads == 0, f"{prefix}.tiny_hidden_size",
                        "must be divisible by tiny_heads")


@dataclass
class DataConfig:
    source: Literal["trec6", "files", "hub"] = "trec6"
    # files
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    unlabeled: str | None = None
    # hub
    name: str | None = None
    config: str | None = None
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str | None = "test"
    unlabeled_split: str | None = None
    # columns
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # few-labels protocol
    labels_per_class: int | None = 16
    max_unlabeled: int | None = None
    validation_fraction: float = 0.1
    length_grouping: bool = False

    def check(self, err: _Errors, prefix: str) -> None:
        if self.labels_per_class is not None:
            err.require(self.labels_per_class >= 1, f"{prefix}.labels_per_class", "must be >= 1 or null")
        if self.max_unlabeled is not None:
            err.require(self.max_unlabeled >= 1, f"{prefix}.max_unlabeled", "must be >= 1 or null")
        err.require(0.0 < self.validation_fraction < 1.0, f"{prefix}.validation_fraction", "must be in (0, 1)")
        if self.source == "hub":
            err.require(bool(self.name), f"{prefix}.name", "is required with data=hub")


@dataclass
class StrategyConfig:
    name: Literal["alternate", "mix"] = "mix"
    labeled_steps: int = 1

    def check(self, err: _Errors, prefix: str) -> None:
        err.require(self.labeled_steps >= 1, f"{prefix}.labeled_steps", "must be >= 1")


@dataclass
class LossConfig:
    weight: float | None = None
    tau: float | None = None
    negatives: Literal["finetuned", "pretrained", "none"] = "finetuned"
    teacher_cache: bool = True
    projection: Literal["none", "mlp"] = "none"
    mask_same_class: bool = False
    rampup_steps: int = 0
    consistency_weight: float = 0.0
    consistency_threshold: float = 0.9
    self_training_weight: float = 0.0
    self_training_every: int = 50
    self_training_top: float = 0.5
    self_training_student: Literal["continue", "fresh"] = "continue"
    self_training_select: Literal["per_class", "global"] = "per_class"
    self_training_top_step: float = 0.0
    self_training_targets: Literal["hard", "soft"] = "hard"
    self_training_ensemble: bool = False
    unlabeled_mask_prob: float = 0.0
    supcon_weight: float = 0.0
    supcon_tau: float = 0.1

    def check(self, err: _Errors, prefix: str) -> None:
        if self.weight is not None:
            err.require(self.weight >= 0, "lambda", "must be >= 0")
        if self.tau is not None:
            err.require(self.tau > 0, "tau", "must be > 0")
        err.require(self.rampup_steps >= 0, f"{prefix}.rampup_steps", "must be >= 0")
        err.require(self.consistency_weight >= 0, f"{prefix}.consistency_weight", "must be >= 0")
        err.require(0.0 <= self.consistency_threshold < 1.0, f"{prefix}.consistency_threshold", "must be in [0, 1)")
        err.require(0.0 <= self.unlabeled_mask_prob < 1.0, f"{prefix}.unlabeled_mask_prob", "must be in [0, 1)")
        err.require(self.self_training_weight >= 0, f"{prefix}.self_training_weight", "must be >= 0")
        err.require(self.self_training_every >= 1, f"{prefix}.self_training_every", "must be >= 1")
        err.require(0.0 < self.self_training_top <= 1.0, f"{prefix}.self_training_top", "must be in (0, 1]")
        err.require(0.0 <= self.self_training_top_step <= 1.0, f"{prefix}.self_training_top_step", "must be in [0, 1]")
        err.require(self.supcon_weight >= 0, f"{prefix}.supcon_weight", "must be >= 0")
        err.require(self.supcon_tau > 0, f"{prefix}.supcon_tau", "must be > 0")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    fused: bool = True

    def check(self, err: _Errors, prefix: str) -> None:
        err.require(self.lr > 0, f"{prefix}.lr", "must be > 0")
        err.require(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        err.require(0.0 <= self.warmup_ratio <= 1.0, f"{prefix}.warmup_ratio", "must be in [0, 1]")
        err.require(0.0 <= self.beta1 < 1.0, f"{prefix}.beta1", "must be in [0, 1)")
        err.require(0.0 <= self.beta2 < 1.0, f"{prefix}.beta2", "must be in [0, 1)")
        err.require(self.eps > 0, f"{prefix}.eps", "must be > 0")
        if self.max_grad_norm is not None:
            err.require(self.max_grad_norm > 0, f"{prefix}.max_grad_norm", "must be > 0 or null")


@dataclass
class TrainerConfig:
    max_steps: int = 150
    batch_size: int = 16
    unlabeled_batch_size: int = 32
    eval_batch_size: int = 128
    eval_every: int = 50
    save_every: int = 50
    keep_last: int = 1
    keep_train_state: int = 1
    save_only_model: bool = False
    log_every: int = 10
    select_metric: str = "val/accuracy"
    nproc: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 10
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    dist_timeout_s: int = 60
    tensorboard: bool = False
    malloc_tuning: bool = True
    compile: bool = False
    sdpa_math_max_length: int = 128
    cls_only_last_layer: bool = True

    def check(self, err: _Errors, prefix: str) -> None:
        for key in ("max_steps", "batch_size", "unlabeled_batch_size", "eval_batch_size", "keep_last",
                    "keep_train_state", "log_every", "nproc", "max_nonfinite_skips", "dist_timeout_s"):
            err.require(getattr(self, key) >= 1, f"{prefix}.{key}", "must be >= 1")
        for key in ("eval_every", "save_every"):
            err.require(getattr(self, key) >= 0, f"{prefix}.{key}", "must be >= 0 (0 = only at the end)")
        err.require(self.sdpa_math_max_length >= 0, f"{prefix}.sdpa_math_max_length", "must be >= 0 (0 = never)")
        err.require(self.select_metric.startswith("val/"), f"{prefix}.select_metric",
                    "must be a validation metric such as val/accuracy or val/macro_f1")


@dataclass
class TrainConfig:
    """The whole `sft train` config, typed. `lambda`/`tau` live in :attr:`loss` (weight/tau)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig | None = None
    seed: int = 0
    resume: str | None = None
    allow_resume_mismatch: bool = False
    run_root: str = "runs"
    run_name: str = "run"
    cache_dir: str | None = None
    debug: bool = False


def _key(default: Any, meaning: str, required: bool = False) -> Any:
    """A field with its one-line meaning, for the commands without a YAML file (`sft predict --help`
    lists these); `required` fields have no usable default and are checked by the command's parser."""
    return field(default=default, metadata={"help": meaning, "required": required})


def field_help(cls: type) -> list[tuple[str, Any, Any, str, bool]]:
    """(name, annotation, default, meaning, required) of each field of a config dataclass, in order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default, f.metadata.get("help", ""), bool(f.metadata.get("required")))
            for f in dataclasses.fields(cls)]


def type_text(tp: Any) -> str:
    """A field's annotation as a user reads it: `int`, `'auto' | 'cpu' | 'cuda'`, `str or null`."""
    return _type_name(tp)


@dataclass
class _ScoringConfig:
    """What `sft eval` and `sft predict` share: a checkpoint scored in batches on a device."""

    checkpoint: str = _key("", "a checkpoint directory, or a run directory (its best checkpoint)", required=True)
    batch_size: int = _key(128, "texts per batch")
    device: Literal["auto", "cpu", "cuda"] = _key("auto", "where the model runs (auto: cuda when available)")
    precision: Literal["fp32", "bf16", "fp16"] = _key("fp32", "number format of the forward (bf16, fp16: autocast)")
    debug: bool = _key(False, "show full tracebacks for user errors")


@dataclass
class EvalConfig(_ScoringConfig):
    split: Literal["test", "validation"] = "test"
    data: DataConfig | None = None
    run_root: str = "runs"
    run_name: str = "eval"
    cache_dir: str | None = None


@dataclass
class PredictConfig(_ScoringConfig):
    input: str = _key("", "texts to label: .csv, .tsv, .jsonl, or .txt (one text per line)", required=True)
    output: str = _key("", "where predictions go: .csv or .jsonl (each input row + pred_label + prob_LABEL)",
                       required=True)
    text_column: str | None = _key(None, "column or field that holds the text; null = the checkpoint's data.text_column")
    text_pair_column: str | None = _key(None, "second text column for sentence pairs; null = the checkpoint's "
                                              "data.text_pair_column")
    max_length: int | None = _key(None, "tokens per text (longer texts are truncated); null = the checkpoint's "
                                        "model.max_length")


# ----------------------------------------------------------------------------------------------------
# Validation machinery


# Keys that users write under another name: `lambda` and `tau` are mapped into loss.weight / loss.tau
# by configs/loss/*.yaml, so a problem with those is named by both.
SHOWN_AS = {"loss.weight": "lambda (loss.weight)", "loss.tau": "tau (loss.tau)"}


class _Errors:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.type_errors = 0  # values that do not fit their field's annotation (the field keeps its default)

    def add(self, key: str, message: str) -> None:
        self.messages.append(f"{SHOWN_AS.get(key, key)}: {message}")

    def add_type_error(self, key: str, message: str) -> None:
        self.type_errors += 1
        self.add(key, message)

    def require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.add(key, message)

    def raise_if_any(self, what: str) -> None:
        if self.messages:
            lines = "\n".join(f"  - {m}" for m in self.messages)
            raise ConfigError(f"invalid {what} config ({len(self.messages)} problem(s)):\n{lines}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


_WRONG = object()  # what _coerce returns for a value that does not fit its annotation


def _coerce(value: Any, tp: Any, key: str, err: _Errors, shown: Any = None) -> Any:
    """Check `value` against the annotation `tp`: the (possibly int->float widened) value, or _WRONG after
    reporting a type error, so no later check ever sees a value of the wrong type. `shown`: the
    annotation the message names (the whole `X | None` when checking its X)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], key, err, shown=tp)
        raise TypeError(f"{key}: unions of several types are not supported by the config schema")
    if origin is Literal:
        if value not in get_args(tp):
            hint = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            err.add_type_error(key, f"got {value!r}, expected one of {_type_name(shown or tp)}{extra}")
            return _WRONG
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            err.add_type_error(key, f"expected a group of keys, got {value!r}")
            return _WRONG
        return _build(tp, value, key, err)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        # YAML reads run_name=123 or run_name=nan as numbers; a string field takes them as typed.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{key}: annotation {tp!r} is not supported by the config schema")
    if not ok:
        err.add_type_error(key, f"expected {_type_name(shown or tp)}, got {value!r} ({type(value).__name__})")
        return _WRONG
    return value


# Keys that were renamed: a config or command line still using the old name is told the new one
# instead of a spelling guess.
RENAMED_KEYS = {"loss.consistency_mask_prob": "loss.unlabeled_mask_prob"}
# Keys that were removed, and why: a config or command line still setting one is told so. A saved config
# (a checkpoint's, read by from_plain) that holds one still loads: the key no longer changes anything.
_BELOW_3_PERCENT = "measured below 3% (README Benchmark)"
REMOVED_KEYS = {"trainer.embedding_grad_rows": _BELOW_3_PERCENT, "trainer.cpu_dropout": _BELOW_3_PERCENT,
                "optim.fused_clipping": _BELOW_3_PERCENT}


def unknown_key_message(key: str, guess: str | None) -> str:
    """The error text for an unknown key: why it was removed, its new name when it was renamed, else the
    closest known key."""
    if key in REMOVED_KEYS:
        return f"removed: {REMOVED_KEYS[key]}"
    if key in RENAMED_KEYS:
        return f"unknown key (renamed to {RENAMED_KEYS[key]!r})"
    return f"unknown key (did you mean {guess!r}?)" if guess else "unknown key"


def _build(cls: type, raw: dict[str, Any], prefix: str, err: _Errors) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    errors_before = len(err.messages)
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            err.add(full, unknown_key_message(full, (prefix + "." if prefix else "") + hint[0] if hint else None))
            continue
        if value == "???":
            err.add(full, "is required but missing")
            continue
        value = _coerce(value, hints[key], full, err)
        if value is not _WRONG:  # a wrong value leaves the field at its default (reported above)
            kwargs[key] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - every field has a default
        err.add(prefix or "config", str(exc))
        return cls()
    if hasattr(obj, "check") and len(err.messages) == errors_before:
        obj.check(err, prefix)  # range checks only once the types are right
    return obj


def _to_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        try:
            data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as exc:  # interpolation errors name the key themselves
            raise ConfigError(f"config could not be resolved: {exc}") from exc
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    return data


def parse_train(cfg: Any, overrides: list[str] | None = None) -> TrainConfig:
    """Validate a composed `sft train` config; raise ConfigError listing every problem."""
    raw = _to_dict(cfg)
    err = _Errors()
    raw.pop("lambda", None)  # mapped into loss.weight by configs/loss/*.yaml
    raw.pop("tau", None)
    out: TrainConfig = _build(TrainConfig, raw, "", err)
    if err.type_errors:
        # Types first: the checks below combine keys, and a key that was given the wrong type holds its
        # default, which they would judge as if the user had chosen it.
        err.raise_if_any("train")
    if out.strategy is None:
        if out.loss.weight is not None:
            err.add("lambda", "has no effect without a strategy: add +strategy=mix or +strategy=alternate "
                              "(or drop lambda for the supervised baseline)")
        if out.loss.tau is not None:
            err.add("tau", "has no effect without a strategy: add +strategy=mix or +strategy=alternate")
    else:
        err.require(out.loss.weight is not None, "lambda", "is required with a strategy")
        err.require(out.loss.tau is not None, "tau", "is required with a strategy")
    _check_unlabeled(out, err)
    _check_run_name(out.run_name, err)
    tr = out.trainer
    for key, value in (("batch_size", tr.batch_size), ("unlabeled_batch_size", tr.unlabeled_batch_size)):
        if value >= 1 and tr.nproc >= 1 and value % tr.nproc:
            err.add(f"trainer.{key}", f"{value} is a global batch size and must be divisible by trainer.nproc={tr.nproc}")
    if out.data.source == "files":
        err.require(bool(out.data.train), "data.train", "is required with data=files")
    if out.resume is not None and out.resume != "auto":
        err.require(Path(out.resume).exists(), "resume", f"path {out.resume!r} does not exist")
    err.raise_if_any("train")
    return out


def parse_eval(cfg: Any) -> EvalConfig:
    raw = _to_dict(cfg)
    err = _Errors()
    if raw.get("checkpoint") == "???":
        del raw["checkpoint"]  # reported once below, with the command that gives it
    out: EvalConfig = _build(EvalConfig, raw, "", err)
    if err.type_errors:
        err.raise_if_any("eval")
    err.require(bool(out.checkpoint), "checkpoint", "is required: sft eval checkpoint=PATH")
    if out.checkpoint:
        err.require(Path(out.checkpoint).expanduser().exists(), "checkpoint", f"path {out.checkpoint!r} does not exist")
    err.require(out.batch_size >= 1, "batch_size", "must be >= 1")
    _check_run_name(out.run_name, err)
    err.raise_if_any("eval")
    return out


def parse_predict(raw: dict[str, Any]) -> PredictConfig:
    err = _Errors()
    out: PredictConfig = _build(PredictConfig, raw, "", err)
    if err.type_errors:
        err.raise_if_any("predict")
    for key, *_, required in field_help(PredictConfig):
        if required:
            err.require(bool(getattr(out, key)), key, f"is required: sft predict {key}=PATH")
    err.require(out.batch_size >= 1, "batch_size", "must be >= 1")
    err.raise_if_any("predict")
    return out


def _check_unlabeled(out: TrainConfig, err: _Errors) -> None:
    """What needs the unlabeled stream, checked from the config alone before any data or model loads:
    terms that only a strategy feeds, a strategy with no unlabeled source, self-training rounds that
    would all fall after the last step (each of these would otherwise run as a silent no-op or fail late)."""
    loss, data, tr = out.loss, out.data, out.trainer
    if out.strategy is None:
        for key in ("self_training_weight", "consistency_weight"):
            if getattr(loss, key) > 0:
                err.add(f"loss.{key}", "has no effect without a strategy (it trains on the unlabeled stream): "
                                       "add +strategy=mix or +strategy=alternate")
        return
    source = {"files": "data.unlabeled", "hub": "data.unlabeled_split"}.get(data.source)
    given = source is not None and getattr(data, source.split(".", 1)[1]) is not None
    if data.labels_per_class is None and not given:
        how = f" or {source}=..." if source else " (data=files or data=hub can name a source of unlabeled texts)"
        err.add("data.labels_per_class", f"+strategy={out.strategy.name} needs unlabeled texts, but with "
                "data.labels_per_class=null all of train stays labeled and no unlabeled source is given: set "
                f"data.labels_per_class=K (the rest of train becomes unlabeled){how}")
    if loss.self_training_weight > 0 and loss.self_training_every >= tr.max_steps:
        err.add("loss.self_training_every", f"{loss.self_training_every} >= trainer.max_steps={tr.max_steps}: "
                f"self-training re-labels first after step {loss.self_training_every}, so no round would happen; "
                "lower loss.self_training_every or raise trainer.max_steps")


def _check_run_name(name: str, err: _Errors) -> None:
    # A run name becomes a directory under run_root; it must not climb out of it.
    bad = "/" in name or "\\" in name or name in ("", ".", "..") or name.startswith("~")
    err.require(not bad, "run_name", f"{name!r} must be a plain directory name (no '/', '..' or '~')")


def to_plain(obj: Any) -> dict[str, Any]:
    """A typed config back to plain data (for config.yaml and checkpoints)."""
    return dataclasses.asdict(obj)


def from_plain(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from :func:`to_plain` output (worker processes, checkpoints)."""
    data = {**data}
    for key in REMOVED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            data[section] = {k: v for k, v in data[section].items() if k != name}
    err = _Errors()
    out: TrainConfig = _build(TrainConfig, data, "", err)
    err.raise_if_any("saved")
    return out
