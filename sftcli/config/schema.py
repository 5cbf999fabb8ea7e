"""Every config key of sft, its type, its default and its one-line meaning: defined once, here.

Hydra's base config of each group is generated from these models (sftcli/config/store.py), the YAML
files under configs/ hold presets only, `sft COMMAND --help` reads the meanings from `description`,
and pydantic validates a composed config against them (sftcli/config/parse.py).

Types are strict (a string for an int is an error, not a conversion), except that an int widens to a
float and a number given to a text key is taken as text (YAML reads run_name=123 as a number).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from sftcli.fields import (
    TRACKERS,
    Checks,
    Group,
    Text,
    TrackerNames,
    check_exists,
    check_run_name,
    check_trackers,
    group,
    key,
    required,
    saved_config,
)
from sftcli.objectives.registry import OBJECTIVES, loss_config


class ModelConfig(Group):
    source: Literal["minilm", "hf", "tiny"] = key(
        "minilm", "where weights come from: minilm (embedded) | hf (hub id or local dir) | tiny (random)")
    name_or_path: Text | None = key(
        None, "hub id (e.g. bert-base-uncased) or a local directory with config + weights + tokenizer (model=hf)")
    revision: Text | None = key(None, "hub revision (branch, tag or commit); null = the default branch")
    trust_remote_code: bool = key(False, "allow custom modelling code from the model repo; off unless you trust it")
    pooling: Literal["mean", "cls"] = key("mean", "representation for the contrastive term: mean (over non-pad "
                                                  "tokens) | cls")
    head_pooling: Literal["auto", "pooler", "mean", "cls", "max"] = key(
        "auto", "what the classifier reads: auto (a sentence-transformers model's own pooling, else pooler) | "
                "pooler (the model's own head: BERT = CLS + dense + tanh) | mean | cls | max (over non-pad tokens)")
    # At most what the model's position embeddings reach: checked when the model is loaded. `auto` is
    # resolved to a number before the run starts (sftcli/model.py: resolve_max_length), so config.yaml,
    # checkpoints and everything downstream read an int.
    max_length: Annotated[int, Field(ge=8, le=65536)] | Literal["auto"] = key(
        128, "tokens per text (longer texts are cut): a number | auto (the encoder's own limit: a "
             "sentence-transformers model's max_seq_length, else its tokenizer's model_max_length)")
    dropout: float | None = key(None, "set every dropout probability of the encoder; null keeps the model's own",
                                ge=0, lt=1)
    class_prior: Literal["labeled", "unlabeled"] = key(
        "labeled", "the class balance the exported classifier predicts under: labeled (as trained, the labeled "
                   "texts' balance) | unlabeled (estimated from the unlabeled texts at the end of training and "
                   "folded into the head's bias; test metrics and the export use it)")
    # The tiny BERT is for tests: bounded so a typo cannot ask for gigabytes.
    tiny_hidden_size: int = key(32, "width of the tiny BERT (model=tiny)", ge=1, le=1024)
    tiny_layers: int = key(2, "transformer layers of the tiny BERT", ge=1, le=24)
    tiny_heads: int = key(2, "attention heads of the tiny BERT", ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        checks = Checks()
        if self.source == "hf":
            checks.require(bool(self.name_or_path), "name_or_path", "is required with model=hf")
        if self.source == "tiny":
            checks.require(self.tiny_hidden_size % self.tiny_heads == 0, "tiny_hidden_size",
                           "must be divisible by tiny_heads")
        checks.raise_if_any()
        return self


_LABELS_PER_CLASS = ("K labeled examples per class from train (seeded); the rest of train is unlabeled; "
                     "null = all")


class DataConfig(Group):
    source: Literal["trec6", "files", "hub"] = key(
        "trec6", "trec6 (the embedded TREC-6 questions) | files (local files) | hub (datasets.load_dataset)")
    train: Text | list[Text] | None = key(
        None, "labeled training file, or a list of them read as one ([round1.csv,round2.csv]: labeling rounds; a "
              "text labeled differently in two rows is an error naming both) (required with data=files)")
    validation: Text | None = key(None, "labeled validation file; null = carve validation_fraction of train "
                                        "(seeded, stratified)")
    test: Text | None = key(None, "labeled test file; null = no test metrics")
    unlabeled: Text | None = key(None, "unlabeled texts (any format above, or .txt one per line); null = rest of "
                                       "train when labels_per_class is set")
    name: Text | None = key(None, "hub id or local path of the dataset (required with data=hub)")
    config: Text | None = key(None, "dataset configuration name (data=hub)")
    train_split: Text = key("train", "split used for training (data=hub)")
    validation_split: Text | None = key(None, "split for model selection; null = carve validation_fraction of "
                                              "train (data=hub)")
    test_split: Text | None = key("test", "split for test metrics; null = none (the default 'test' may be absent: "
                                          "metrics skipped)")
    unlabeled_split: Text | None = key(None, "split of unlabeled texts; null = rest of train when labels_per_class "
                                             "is set (data=hub)")
    label_names: list[Text] | None = key(
        None, "every label, in this order, when train may lack some (the first labeling rounds, a rare class): "
              "validation and test may hold them, the model has an output for each; null = the labels train has")
    text_column: Text = key("text", "column that holds the text")
    text_pair_column: Text | None = key(None, "optional second text column (sentence pairs)")
    label_column: Text = key("label", "column that holds the label (strings or integers; a ClassLabel keeps its "
                                      "class names)")
    labels_per_class: int | None = key(16, _LABELS_PER_CLASS, ge=1)
    max_unlabeled: int | None = key(None, "cap on the unlabeled stream (seeded sample); null = all of it; 0 = none",
                                    ge=0)
    validation_fraction: float = key(0.1, "share of each class carved from train when there is no validation "
                                          "split", gt=0, lt=1)
    length_grouping: bool = key(False, "batch texts of similar length together (less padding, faster); "
                                       "shuffled per epoch")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        checks = Checks()
        if self.source == "hub":
            checks.require(bool(self.name), "name", "is required with data=hub")
        if self.label_names is not None:
            names = [str(n) for n in self.label_names]
            checks.require(len(names) >= 2, "label_names", f"needs at least 2 labels, got {names}")
            twice = sorted({n for n in names if names.count(n) > 1})
            checks.require(not twice, "label_names", f"names {', '.join(map(repr, twice))} more than once")
        checks.raise_if_any()
        return self


class StrategyConfig(Group):
    # No default: the option (+strategy=mix, +strategy=alternate) names it.
    name: Literal["alternate", "mix"] = required(
        "one forward over labeled + unlabeled texts per optimizer step (mix) | labeled and unlabeled steps "
        "in turn (alternate)")
    labeled_steps: int = key(1, "with alternate: labeled steps before each unlabeled step (the ratio)", ge=1)
    unlabeled: Literal["required", "optional"] = key(
        "required", "required (no unlabeled texts is an error) | optional (+recipe=best: without unlabeled texts "
                    "the run trains its first round on the labels alone)")


# The loss group: each objective's keys, declared beside it and assembled by the registry.
LossConfig = loss_config(__name__)


class OptimConfig(Group):
    lr: float = key(1e-4, "peak learning rate (AdamW, linear warmup then linear decay to 0 at max_steps)", gt=0)
    weight_decay: float = key(0.01, "decoupled weight decay (not applied to biases and LayerNorm weights)", ge=0)
    warmup_ratio: float = key(0.1, "fraction of max_steps spent warming up linearly from 0", ge=0, le=1)
    beta1: float = key(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = key(0.999, "AdamW beta2", ge=0, lt=1)
    eps: float = key(1e-8, "AdamW epsilon", gt=0)
    layer_decay: float = key(1.0, "layer-wise lr decay: encoder layer i of L (from 0) trains at lr x "
                                  "layer_decay^(L-i), the embeddings at lr x layer_decay^(L+1), the head and the "
                                  "objectives' own parameters at lr; 1 = one lr for all", gt=0, le=1)
    max_grad_norm: float | None = key(1.0, "clip the global gradient norm; null = no clipping", gt=0)
    fused: bool = key(True, "fused AdamW kernel where torch has one (CPU, CUDA): several times faster than the "
                            "per-tensor loop")


# The validation metrics that can pick the best checkpoint (sftcli/evaluate.py computes them; roc_auc
# only for two classes, from the probability of the second label).
SELECT_METRICS = ("val/accuracy", "val/macro_f1", "val/weighted_f1", "val/roc_auc")


class TrainerConfig(Group):
    max_steps: int = key(150, "optimizer steps", ge=1)
    epochs: float | None = key(None, "passes over the labeled set instead of max_steps: ceil(epochs x labeled texts / "
                                     "batch_size) steps (fractions allowed); null = max_steps", gt=0, le=1e6)
    batch_size: int = key(16, "labeled texts per step, GLOBAL (split across processes)", ge=1)
    unlabeled_batch_size: int = key(32, "unlabeled texts per step, GLOBAL (split across processes)", ge=1)
    eval_batch_size: int = key(128, "texts per evaluation batch (per process)", ge=1)
    eval_every: int = key(50, "evaluate on validation every N steps (and at the end); 0 = only at the end",
                          ge=0, note="0 = only at the end")
    save_every: int = key(50, "checkpoint every N steps (and at the end, and on a new best); 0 = only those",
                          ge=0, note="0 = only at the end")
    keep_last: int = key(1, "newest checkpoints kept (the best and the one resumed from are always kept)", ge=1)
    keep_train_state: int = key(1, "newest checkpoints that keep their training state (optimizer, data "
                                   "positions, RNG) for exact resume; older ones keep weights only", ge=1)
    save_only_model: bool = key(False, "checkpoints hold weights, tokenizer and config only (the run cannot be "
                                       "resumed); only the best is kept")
    log_every: int = key(10, "write train/* and perf/* metrics every N steps", ge=1)
    select_metric: Literal[SELECT_METRICS] = key(
        "val/accuracy", "validation metric that picks the best checkpoint and that early stopping watches (higher "
                        "is better): val/accuracy | val/macro_f1 | val/weighted_f1 | val/roc_auc (two classes)")
    early_stopping_patience: int | None = key(
        None, "stop after this many evaluations in a row without improvement of select_metric; null = off (needs "
              "eval_every > 0)", ge=1)
    early_stopping_threshold: float = key(0.0, "with early stopping: an evaluation improves only when it beats the "
                                               "best so far by more than this", ge=0)
    ema_decay: float | None = key(
        None, "evaluate, select, re-label with and export a moving average of the weights (this decay per step, "
              "warmed up as min(decay, (1 + n) / (10 + n)) over a model's first n updates); null = the weights as "
              "trained", ge=0, lt=1)
    nproc: int = key(1, "worker processes on this node (torch.distributed); external torchrun also works", ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = key(
        "auto", "auto (bf16 where the device computes it natively, else fp32) | fp32 | bf16 (autocast) | fp16 "
                "(CUDA only)")
    device: Literal["auto", "cpu", "cuda"] = key("auto", "auto (cuda when available) | cpu | cuda")
    nonfinite: Literal["stop", "skip"] = key(
        "stop", "non-finite loss or gradient: stop (before the update) | skip (the step, on all ranks)")
    max_nonfinite_skips: int = key(10, "with nonfinite=skip: abort after this many skipped steps", ge=1)
    progress: Literal["auto", "bar", "plain", "none"] = key(
        "auto", "auto (bar on a terminal, plain lines otherwise) | bar | plain | none")
    dist_timeout_s: int = key(60, "seconds a rank waits for the others before the job fails", ge=1)
    report_to: TrackerNames = key(
        [], f"experiment trackers that get every metric: a list from {', '.join(TRACKERS)}, none (trainer.report_to"
            "=mlflow or =[mlflow,wandb]); metrics.jsonl is always written")
    tensorboard: bool = key(False, "also write TensorBoard event files in the run dir (the same as adding "
                                   "tensorboard to report_to)")
    # The speed-ups (malloc_tuning, sdpa_math_max_length, cls_only_last_layer) are off on CUDA, where they
    # were never measured.
    malloc_tuning: bool = key(True, "glibc, CPU: keep large tensors (the embedding gradient, rebuilt every step) "
                                    "in the heap, not fresh mmaps, while training")
    compile: bool = key(False, "torch.compile the training forward (no gain measured on CPU; minutes of "
                               "compiling first; cls_only_last_layer is off with it)")
    sdpa_math_max_length: int = key(128, "CPU + bf16: batches up to this many tokens per text train attention on "
                                         "SDPA's math backend; 0 = never", ge=0, note="0 = never")
    cls_only_last_layer: bool = key(True, "CPU, BERT with head_pooling=pooler: the last layer runs for the first token "
                                          "only when no hidden states are asked for")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TrainerConfig:
        checks = Checks()
        self.report_to = check_trackers(checks, self.report_to)
        if self.early_stopping_patience is not None:
            checks.require(self.eval_every > 0, "early_stopping_patience",
                           "needs evaluations during training, but trainer.eval_every=0 (only at the end): set "
                           "trainer.eval_every=N")
        # Both given on the command line: which one counts would be a guess. trainer.max_steps has a
        # default (and +recipe=... may set it), so only the command line tells that it was meant.
        given = info.context.get("given", ()) if info.context else ()
        if self.epochs is not None and "trainer.max_steps" in given:
            checks.require(False, "epochs", f"trainer.epochs={self.epochs:g} and trainer.max_steps={self.max_steps} "
                           "are both given: give one (epochs sets the steps to ceil(epochs x labeled texts / "
                           "batch_size))")
        checks.raise_if_any()
        return self


# Keys typed at the top level of `sft train` (lambda=0.5; `lambda` is a Python keyword) and the field
# that holds each: configs/loss/infonce.yaml maps them once (weight: ${lambda}), code reads the field.
ALIASES = {"lambda": "loss.weight", "tau": "loss.tau"}


class TrainConfig(Group):
    """The whole `sft train` config. `lambda`/`tau` live in :attr:`loss` (weight/tau), see ALIASES."""

    model: ModelConfig = group(ModelConfig, "the encoder (model=minilm | hf | tiny)")
    data: DataConfig = group(DataConfig, "the texts and the few-labels protocol (data=trec6 | files | hub)")
    loss: LossConfig = group(LossConfig, "the training terms beside cross-entropy")
    optim: OptimConfig = group(OptimConfig, "AdamW and its schedule")
    trainer: TrainerConfig = group(TrainerConfig, "the loop: steps, batches, evaluation, checkpoints, processes")
    strategy: StrategyConfig | None = key(None, "how labeled and unlabeled batches share the steps; null = the "
                                                "supervised baseline (+strategy=mix | alternate)")
    seed: int = key(0, "one seed for data subsampling, initialisation, shuffling and dropout", ge=0)
    resume: Text | None = key(None, "null | auto (newest valid checkpoint of the same command's run) | PATH "
                                    "(checkpoint or run dir)")
    allow_resume_mismatch: bool = key(False, "resume even when model, data, seed, batch size or world size "
                                             "changed")
    run_root: Text = key("runs", "directory that holds the run directories (and sweeps/ for multiruns)")
    run_name: Text = key("run", "name of this run's directory under run_root")
    cache_dir: Text | None = key(None, "tokenisation and frozen-encoder caches; null = $SFT_CACHE_DIR or "
                                       "~/.cache/sft")
    debug: bool = key(False, "show full tracebacks for user errors")
    # What validation changed, for the run's log (e.g. an optional strategy without unlabeled texts).
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return self._notes

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TrainConfig:
        if saved_config(info):
            return self
        self._drop_optional_strategy()
        checks = Checks()
        data, tr = self.data, self.trainer
        for entry in OBJECTIVES:  # each objective checks its keys against the rest of the run
            entry.keys.check_run(self.loss, self, checks)
        self._check_unlabeled(checks)
        check_run_name(checks, self.run_name)
        for name in ("batch_size", "unlabeled_batch_size"):
            value = getattr(tr, name)
            checks.require(value % tr.nproc == 0, f"trainer.{name}",
                           f"{value} is a global batch size and must be divisible by trainer.nproc={tr.nproc}")
        if data.source == "files":
            checks.require(bool(data.train), "data.train", "is required with data=files")
        if self.resume is not None and self.resume != "auto":
            check_exists(checks, "resume", self.resume)
        checks.raise_if_any()
        return self

    def _has_unlabeled_source(self) -> bool:
        """Whether the config gives the run unlabeled texts (the rest of train, or a named source)."""
        data = self.data
        if data.max_unlabeled == 0:
            return False
        source = {"files": "unlabeled", "hub": "unlabeled_split"}.get(data.source)
        return data.labels_per_class is not None or (source is not None and getattr(data, source) is not None)

    def _drop_optional_strategy(self) -> None:
        """strategy.unlabeled=optional without unlabeled texts: what only the unlabeled stream feeds is
        turned off, and a fresh-student recipe keeps its first round (the teacher on the labels), so the
        run is the recipe's purely supervised part."""
        if self.strategy is None or self.strategy.unlabeled != "optional" or self._has_unlabeled_source():
            return
        self._notes.append(f"no unlabeled texts: +strategy={self.strategy.name} and the terms on unlabeled texts "
                           "are off; training on the labels alone")
        self.strategy = None
        for entry in OBJECTIVES:
            entry.keys.drop_unlabeled(self.loss, self, self._notes)

    def _check_unlabeled(self, checks: Checks) -> None:
        """What needs the unlabeled stream, checked from the config alone before any data or model loads:
        terms that only a strategy feeds, a strategy with no unlabeled source, self-training rounds that
        would all fall after the last step (each would otherwise run as a silent no-op or fail late)."""
        data = self.data
        if self.strategy is None:
            for entry in OBJECTIVES:
                for name in entry.keys.unlabeled_keys(self.loss):
                    checks.require(False, f"loss.{name}", "has no effect without a strategy (it trains on the "
                                   "unlabeled stream): add +strategy=mix or +strategy=alternate")
            return
        source = {"files": "data.unlabeled", "hub": "data.unlabeled_split"}.get(data.source)
        if not self._has_unlabeled_source():
            how = f" or {source}=..." if source else " (data=files or data=hub can name a source of unlabeled texts)"
            if data.max_unlabeled == 0:
                checks.require(False, "data.max_unlabeled", f"0 leaves no unlabeled texts, which "
                               f"+strategy={self.strategy.name} needs")
            else:
                checks.require(False, "data.labels_per_class", f"+strategy={self.strategy.name} needs unlabeled "
                               "texts, but with data.labels_per_class=null all of train stays labeled and no "
                               "unlabeled source is given: set data.labels_per_class=K (the rest of train becomes "
                               f"unlabeled){how}")


class _OnCheckpoint(Group):
    """A command on a trained model: `checkpoint` names a directory that exists."""

    checkpoint: Text = required("a checkpoint directory, or a run directory (its best checkpoint)")

    @model_validator(mode="after")
    def _check_checkpoint(self) -> _OnCheckpoint:
        checks = Checks()
        if self.checkpoint:
            check_exists(checks, "checkpoint", self.checkpoint)
        checks.raise_if_any()
        return self


class _ScoringConfig(_OnCheckpoint):
    """What `sft eval` and `sft predict` share: a checkpoint scored in batches on a device."""

    batch_size: int = key(128, "texts per batch", ge=1)
    device: Literal["auto", "cpu", "cuda"] = key("auto", "where the model runs (auto: cuda when available)")
    precision: Literal["fp32", "bf16", "fp16"] = key("fp32", "number format of the forward (bf16, fp16: "
                                                             "autocast)")
    debug: bool = key(False, "show full tracebacks for user errors")


class EvalConfig(_ScoringConfig):
    split: Literal["test", "validation"] = key("test", "which split of the run's data to evaluate")
    data: DataConfig | None = key(None, "null = the run's own data; or data=files data.test=FILE ... to evaluate "
                                        "other data (the run's label names)")
    run_root: Text = key("runs", "eval run directories go under run_root/eval/")
    run_name: Text = key("eval", "name of this evaluation's directory")
    cache_dir: Text | None = key(None, "tokenisation cache; null = $SFT_CACHE_DIR or ~/.cache/sft")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        checks = Checks()
        check_run_name(checks, self.run_name)
        checks.raise_if_any()
        return self


class PredictConfig(_ScoringConfig):
    input: Text = required("texts to label: .csv, .tsv, .jsonl, or .txt (one text per line)")
    output: Text = required("where predictions go: .csv or .jsonl (each input row + pred_label + prob_LABEL)")
    text_column: Text | None = key(None, "column or field that holds the text; null = the checkpoint's "
                                         "data.text_column")
    text_pair_column: Text | None = key(None, "second text column for sentence pairs; null = the checkpoint's "
                                              "data.text_pair_column")
    max_length: int | None = key(None, "tokens per text (longer texts are truncated); null = the checkpoint's "
                                       "model.max_length", ge=1)


class ExportConfig(_OnCheckpoint):
    """`sft export RUN format=onnx [quantize=int8] [output=DIR]`."""

    checkpoint: Text = required("a run directory (its best checkpoint, as the run exported it), its model/, or "
                                "a checkpoint directory")
    format: Literal["onnx"] = key("onnx", "what to write: onnx (one graph from token ids to logits)")
    quantize: Literal["none", "int8"] = key("none", "none (fp32) | int8 (onnxruntime's dynamic quantization: the "
                                                    "matrix products' weights in int8, one scale per output channel)")
    output: Text | None = key(None, "the directory to write; null = RUN/onnx (RUN/onnx-int8 when quantized)")
    opset: int | None = key(None, "ONNX opset of the graph; null = 23 (attention as one Attention operator, "
                                  "which onnxruntime >= 1.23 runs fused), or 18 where onnxruntime cannot run "
                                  "the graph at 23", ge=17, le=23)
    debug: bool = key(False, "show full tracebacks for user errors")


class SelectConfig(Group):
    """`sft select checkpoint=RUN n=N output=FILE [pool=FILE] [strategy=...]`, or a cold start without a
    checkpoint (`sft select n=N pool=FILE output=FILE`)."""

    checkpoint: Text | None = key(None, "the run (its model, as exported) or checkpoint that scores the pool; null = "
                                        "cold start: the frozen encoder's embeddings alone (needs pool=)")
    n: int = required("how many texts to propose for labeling", ge=1)
    output: Text = required("the CSV to write: text, an empty label column to fill in, the predicted label and its "
                            "probability, the score and why each text was chosen")
    pool: Text | None = key(None, "texts to choose from: .csv, .tsv, .jsonl or .txt (one per line); null = the "
                                  "run's unlabeled texts")
    strategy: Literal["diverse", "margin", "entropy", "random"] = key(
        "diverse", "diverse (the most uncertain text of each of n clusters of the model's embeddings; cold "
                   "start: the text nearest each cluster's centre) | margin (smallest gap between the two likeliest "
                   "labels: BreakingTies) | entropy (of the predicted distribution) | random")
    encoder: Text | None = key(None, "cold start: the encoder whose embeddings are clustered (a directory or hub "
                                     "id); null = the embedded all-MiniLM-L6-v2")
    pool_sample: int = key(16384, "texts of the pool scored at most: a seeded sample, the whole pool when smaller",
                           ge=1)
    near_duplicate: float = key(0.95, "cosine similarity of two texts' embeddings from which they count as one "
                                      "(never both proposed, never one already labeled)", gt=0, le=1)
    previous: Text | None = key(None, "an earlier round's output CSV: the summary says how many of the pool's "
                                      "predicted labels changed since (a sign of when more labels stop paying)")
    seed: int = key(0, "seed of the pool sample, the clustering and strategy=random", ge=0)
    text_column: Text | None = key(None, "column or field of pool= that holds the text; null = the checkpoint's "
                                         "data.text_column (cold start: text)")
    batch_size: int = key(128, "texts per batch", ge=1)
    device: Literal["auto", "cpu", "cuda"] = key("auto", "where the model runs (auto: cuda when available)")
    precision: Literal["fp32", "bf16", "fp16"] = key("fp32", "number format of the forward (bf16, fp16: "
                                                             "autocast)")
    debug: bool = key(False, "show full tracebacks for user errors")

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        checks = Checks()
        for name in ("checkpoint", "pool", "previous"):
            if getattr(self, name):
                check_exists(checks, name, getattr(self, name))
        checks.require(self.checkpoint is not None or self.pool is not None, "pool",
                       "is required without a checkpoint (a cold start chooses from pool=FILE)")
        checks.require(self.checkpoint is not None or self.strategy in ("diverse", "random"), "strategy",
                       f"{self.strategy} scores a model's predictions: give checkpoint=RUN, or use diverse or "
                       "random for a cold start")
        checks.require(self.checkpoint is None or self.encoder is None, "encoder",
                       "is for a cold start; with checkpoint= the run's own model embeds the texts")
        checks.raise_if_any()
        return self


# The primary config of each Hydra command; their groups are the nested models.
COMMAND_SCHEMAS: dict[str, type[Group]] = {"train": TrainConfig, "eval": EvalConfig}
