"""The builder: from the typed config to the objects the engine runs (data, model, objectives, optimizer).

The order matters and is kept fixed: the seed first, data before the model (the model's init draws come
after every data draw), the frozen encoder copied before any speed-up touches the model (sftcli/speedups/), the model wrapped
for DDP before the objectives wrap their own modules, the optimizer last.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli import checkpoint as ckpt
from sftcli import dist, rundir, speedups, timing
from sftcli.config import OptimConfig, TrainConfig, TrainerConfig
from sftcli.data import DataBundle, Encoded, LazyTokens, encode, load_data
from sftcli.engine.averaging import WeightAverage
from sftcli.errors import ConfigError, DataError
from sftcli.fields import INT_MAX
from sftcli.model import build_model, load_tokenizer, tokenizer_fingerprint
from sftcli.objectives.base import BuildContext, Objective
from sftcli.objectives.build import build_objectives
from sftcli.objectives.supervised import class_weights
from sftcli.prior import head_layer
from sftcli.strategy import steps_for_labeled

log = logging.getLogger("sft")


def cache_root(cfg: TrainConfig) -> Path:
    return rundir.cache_root(cfg.cache_dir)


@dataclass
class TokenIds:
    """The tokenizer and the token ids of every text set the run reads (cached on disk by content)."""

    tokenizer: Any
    pad_id: int
    labeled: Encoded
    validation: Encoded | None
    test: Encoded | None
    unlabeled: LazyTokens | None  # with a strategy or model.class_prior=unlabeled, else None
    fingerprint: str  # the tokenizer's, part of every cache key


@dataclass(frozen=True)
class Plan:
    """What the config leaves to the data, computed once from the labeled set's size: the run's optimizer
    steps (trainer.epochs in steps) and the length of a self-training round (loss.self_training_rounds in
    steps). config.yaml records them as trainer.max_steps and loss.self_training_every."""

    max_steps: int
    round_steps: int  # steps between re-labels: loss.self_training_every, or the steps / rounds

    def record(self) -> dict[str, int]:
        return {"trainer.max_steps": self.max_steps, "loss.self_training_every": self.round_steps}


def setup_data(cfg: TrainConfig) -> tuple[DataBundle, Plan, np.ndarray | None]:
    """The data, the run's plan and the class weights: what the data decides, checked before the model
    loads (the steps of trainer.epochs, the class weights, a metric that needs two classes)."""
    with timing.phase("read"):
        data = load_data(cfg.data, cfg.seed)
    for note in data.notes:
        log.info("data: %s", note)
    plan = training_plan(cfg, len(data.labeled))
    weights = class_weights(cfg.loss.class_weights, data.label_names, data.labeled.labels)
    if weights is not None:
        log.info("loss: class weights (%s): %s", "balanced" if cfg.loss.class_weights == "balanced" else "given",
                 ", ".join(f"{name}={w:.6g}" for name, w in zip(data.label_names, weights, strict=True)))
    if cfg.trainer.select_metric == "val/roc_auc" and len(data.label_names) != 2:
        raise ConfigError(f"trainer.select_metric=val/roc_auc needs two classes; the data has "
                          f"{len(data.label_names)} ({', '.join(data.label_names)}): choose val/accuracy, "
                          "val/macro_f1 or val/weighted_f1")
    return data, plan, weights


def setup_tokens(cfg: TrainConfig, data: DataBundle) -> TokenIds:
    tokenizer = load_tokenizer(cfg.model)
    cache, tok_fp = cache_root(cfg), tokenizer_fingerprint(tokenizer)

    def enc(ts: Any, name: str) -> Encoded | None:
        if ts is None:
            return None
        out = encode(ts, tokenizer, cfg.model.max_length, cache, tok_fp)
        if out.truncated:
            log.info("data: %d of %d %s texts truncated to model.max_length=%d tokens", out.truncated, len(out),
                     name, cfg.model.max_length)
        return out

    labeled = enc(data.labeled, "labeled")
    assert labeled is not None
    validation, test = enc(data.validation, "validation"), enc(data.test, "test")
    wants_unlabeled = cfg.strategy is not None or cfg.model.class_prior == "unlabeled"
    unlabeled = None
    if wants_unlabeled and data.unlabeled is not None:
        # Tokenised where it is read (a re-label's sample, a batch, the prior's estimate), not before step 1.
        unlabeled = LazyTokens(data.unlabeled, tokenizer, cfg.model.max_length, cache, tok_fp)
    if cfg.strategy is not None and (unlabeled is None or len(unlabeled) == 0):
        raise DataError("a strategy needs unlabeled texts: set data.labels_per_class (the rest of train becomes "
                        "unlabeled) or data.unlabeled=FILE")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenIds(tokenizer, pad_id, labeled, validation, test, unlabeled, tok_fp)


def setup_model(cfg: TrainConfig, data: DataBundle) -> torch.nn.Module:
    model = build_model(cfg.model, data.label_names, cfg.seed)
    if cfg.model.class_prior == "unlabeled":
        # Checked now, not after training: the end of the run folds the prior into this layer's bias.
        try:
            head_layer(model, len(data.label_names))
        except ValueError as exc:
            raise ConfigError(f"model.class_prior=unlabeled: {exc}; use model.class_prior=labeled") from exc
    return model


def setup_objectives(cfg: TrainConfig, plan: Plan, model: torch.nn.Module, data: DataBundle, tokens: TokenIds,
                     env: dist.DistEnv, weights: np.ndarray | None) -> list[Objective]:
    unlabeled = tokens.unlabeled if cfg.strategy is not None else None
    hidden = data.unlabeled.hidden_labels if data.unlabeled is not None else None
    return build_objectives(BuildContext(
        cfg, plan.round_steps, model, unlabeled, hidden, tokens.pad_id, env, cache_root(cfg),
        teacher_key=(tokens.fingerprint, str(cfg.model.max_length), cfg.model.pooling, data.fingerprint()),
        class_weights=weights))


def setup_device(model: torch.nn.Module, objectives: list[Objective], tc: TrainerConfig, env: dist.DistEnv,
                 precision: str) -> tuple[torch.nn.Module, WeightAverage | None]:
    """The model (and the objectives' own modules) on the device, wrapped for DDP; the training forward
    (compiled with trainer.compile) and the weight average (trainer.ema_decay)."""
    for note in speedups.apply_to_model(model, tc, env.device, precision):
        log.debug("model: %s", note)
    model.to(env.device)
    ddp_model = dist.wrap_model(env, model)
    # After the wrap, which gives every rank rank 0's weights: the average starts from those.
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    for objective in objectives:
        objective.to_train()
    if tc.compile:
        # The training forward only (evaluation and checkpoints use the plain module). dynamic=True:
        # dynamically padded batches change shape every step, and one graph serves them all.
        ddp_model = torch.compile(ddp_model, dynamic=True)
        log.info("model: the training forward is compiled (torch.compile); the first steps compile it")
    return ddp_model, average


def setup_optimizer(cfg: TrainConfig, named: list[tuple[str, torch.nn.Parameter]], max_steps: int,
                    objectives: list[Objective]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = build_optimizer(cfg.optim, named)
    return optimizer, build_scheduler(optimizer, max_steps, cfg.optim.warmup_ratio, _period(objectives))


def check_disk_space(run_dir: Path, model: torch.nn.Module, named: list[tuple[str, torch.nn.Parameter]],
                     averaged: bool) -> None:
    """A full disk found now, not at the first save: a checkpoint holds the weights and AdamW's two
    moments of every trained parameter (and a save writes the new one before pruning old ones)."""
    trained = sum(p.numel() * 4 for _, p in named if p.requires_grad)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if averaged:
        weights *= 2  # the raw weights go into the training state beside the averaged ones
    ckpt.check_free_space(run_dir, int(1.1 * (weights + 2 * trained)))


def training_plan(cfg: TrainConfig, n_labeled: int) -> Plan:
    """The run's optimizer steps: trainer.max_steps, or with trainer.epochs as many as it takes the labeled
    stream to pass over the `n_labeled` texts that often, ceil(epochs x n_labeled / batch_size) labeled
    batches (a fractional epoch ends on the batch that completes it; the stream runs on across epochs, so
    no batch is cut short), plus the unlabeled steps between them under +strategy=alternate. With
    loss.self_training_rounds the steps are cut to whole rounds, and a round is steps // rounds long."""
    steps = _steps(cfg, n_labeled)
    lc = cfg.loss
    every = lc.self_training_every
    if cfg.strategy is None or lc.self_training_weight <= 0:
        return Plan(steps, every)
    if lc.self_training_rounds is not None:
        # Whole rounds: the steps become rounds x (steps // rounds), and the rounds re-label that often.
        every = steps // lc.self_training_rounds
        if every < 1:
            raise ConfigError(f"loss.self_training_rounds: {lc.self_training_rounds} rounds in {steps} steps leave "
                              "no step per round; lower it or train longer")
        # Several teachers: each is a round of its own, before the students' rounds.
        steps = every * (lc.self_training_rounds + lc.self_training_teachers - 1)
        log.info("loss.self_training_rounds=%d: a round is %d steps; %d steps in all", lc.self_training_rounds,
                 every, steps)
    elif every >= steps:
        # Without trainer.epochs the config check refused this already; a config built in code may not be.
        given = (f"trainer.epochs={cfg.trainer.epochs:g}" if cfg.trainer.epochs is not None
                 else "trainer.max_steps")
        raise ConfigError(f"loss.self_training_every: {every} >= the {steps} steps of "
                          f"{given}: self-training re-labels first after step {every}, so no "
                          "round would happen; lower loss.self_training_every or raise "
                          f"{given.split('=')[0]}")
    teachers = lc.self_training_teachers
    if teachers * every >= steps:
        # Reachable without loss.self_training_rounds only: with it, the students' rounds come on top.
        raise ConfigError(f"loss.self_training_teachers: {teachers} teachers of {every} steps "
                          f"leave no student round in {steps} steps; lower it or train longer")
    if teachers > 1:
        log.info("loss.self_training_teachers=%d: the first %d rounds are teachers", teachers, teachers)
    return Plan(steps, every)


def _steps(cfg: TrainConfig, n_labeled: int) -> int:
    tc = cfg.trainer
    if tc.epochs is None:
        return tc.max_steps
    # Exact arithmetic on the epochs as typed: in floats 0.1 x 30 / 3 is 1.0000000000000002, one step too many.
    labeled = math.ceil(Fraction(repr(tc.epochs)) * n_labeled / tc.batch_size)
    steps = steps_for_labeled(cfg.strategy, labeled)
    if steps > INT_MAX:
        raise ConfigError(f"trainer.epochs={tc.epochs:g} over {n_labeled} labeled texts makes {steps} steps; at most "
                          f"{INT_MAX} (use fewer epochs)")
    log.info("trainer.epochs=%g: %d steps (%d labeled batches of %d over %d labeled texts)", tc.epochs, steps,
             labeled, tc.batch_size, n_labeled)
    return steps


def _period(objectives: list[Objective]) -> int | None:
    periods = {p for p in (o.schedule_period() for o in objectives) if p is not None}
    return periods.pop() if periods else None


def build_optimizer(o: OptimConfig, named: list[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """AdamW over every trained parameter; biases and normalisation weights are not decayed (standard for
    BERT fine-tuning). With optim.layer_decay < 1 each encoder layer gets its own lr (layer-wise decay)."""
    trained = [(name, p) for name, p in named if p.requires_grad]
    scales = layer_lr_scales([name for name, _ in trained], o.layer_decay)
    by_kind: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for (name, p), scale in zip(trained, scales, strict=True):
        decayed = not (p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower())
        by_kind.setdefault((decayed, scale), []).append(p)
    # Decayed groups first, as before layer_decay existed, so a checkpoint's optimizer state still loads.
    ordered = sorted(by_kind.items(), key=lambda item: (not item[0][0], -item[0][1]))
    groups = [{"params": params, "weight_decay": o.weight_decay if decayed else 0.0, "lr": o.lr * scale}
              for (decayed, scale), params in ordered]
    kwargs = {"lr": o.lr, "betas": (o.beta1, o.beta2), "eps": o.eps}
    if o.fused:
        # One fused kernel over all parameters; on CPU torch's default is a Python loop over ~100
        # tensors (MiniLM: 24 ms instead of 180 ms a step). Devices without the kernel fall back.
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError) as exc:
            log.info("optim: fused AdamW unavailable here (%s); using the default implementation", exc)
    return torch.optim.AdamW(groups, **kwargs)


# Encoder layers as BERT-family models name them: bert.encoder.layer.3., distilbert.transformer.layer.3.,
# layers.3. in others.
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")


def layer_lr_scales(names: list[str], decay: float) -> list[float]:
    """The lr factor of each parameter for layer-wise lr decay (Clark et al. 2020, ELECTRA; Zhang et al.
    2021 for few-sample BERT fine-tuning): the top layer decay^1, each layer below one more factor, the
    embeddings below them all; the head and any parameter outside the encoder 1."""
    if decay == 1.0:
        return [1.0] * len(names)
    layers = [int(m.group(1)) if (m := _LAYER_RE.search(n)) else None for n in names]
    depth = max((i for i in layers if i is not None), default=-1) + 1
    return [decay ** (depth - i) if i is not None else decay ** (depth + 1) if "embeddings." in n else 1.0
            for n, i in zip(names, layers, strict=True)]


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, ratio: float, period: int | None
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `ratio` of the steps, then linear decay to zero; with `period` the schedule
    restarts every `period` steps (fresh self-training teachers and students: each round as a separate
    run would)."""
    period = period or total

    def factor(step: int) -> float:
        start = (step // period) * period
        length = min(period, total - start)
        s, warmup = step - start, int(round(ratio * length))
        if warmup and s < warmup:
            return (s + 1) / warmup
        return max(0.0, (length - s) / max(1, length - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
