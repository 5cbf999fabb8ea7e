"""The training engine: one explicit loop. `train()` and `_step()` each read top to bottom.

One Engine runs in each worker process. Everything distributed goes through `sftcli.dist`; rank 0 writes
files; stop decisions (max steps, signals, non-finite values, early stopping) are agreed across ranks. What
the loss is made of lives in sftcli/objectives/, how the objects are built in build.py, checkpoints in
state.py (what goes into them is Engine.state_dict()), the run's end in finish.py.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from sftcli import checkpoint as ckpt
from sftcli import dist, faults, prior, speedups
from sftcli.config import TrainConfig
from sftcli.data import DataBundle, Encoded, LazyTokens, TokenRows
from sftcli.engine import build, state
from sftcli.engine.averaging import WeightAverage
from sftcli.engine.batches import StepBatches
from sftcli.engine.early_stopping import EarlyStopping
from sftcli.engine.finish import finish
from sftcli.engine.metrics import MetricWindow
from sftcli.engine.progress import Progress
from sftcli.engine.signals import StopSignals
from sftcli.engine.steps import ALL_UNLABELED, Restart, RunView, SetTrainPrior, StepView, Term, UnlabeledRows
from sftcli.errors import ConfigError, NonFiniteError, Preempted
from sftcli.evaluate import autocast, evaluate, predict_logits, resolve_precision, scalar_metrics
from sftcli.model import head_pooling_of, with_max_length
from sftcli.objectives.base import Objective
from sftcli.objectives.registry import term_title
from sftcli.runlog import MetricsWriter, format_metrics, format_value, write_run_config
from sftcli.trackers import Trackers, build_trackers

log = logging.getLogger("sft")


class Engine:
    def __init__(self, cfg: TrainConfig, run_dir: Path, env: dist.DistEnv):
        cfg = with_max_length(cfg)  # the command line resolves it already; a config built in Python may not
        self.cfg, self.tc, self.run_dir, self.env = cfg, cfg.trainer, run_dir, env
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=env.is_main)
        self.step = 0  # optimizer steps done
        self.max_steps = self.tc.max_steps  # the builder resolves trainer.epochs into steps
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.val_metric: float | None = None  # select_metric of the last evaluation
        self.early_stopping = EarlyStopping(self.tc.early_stopping_patience, self.tc.early_stopping_threshold)
        self.nonfinite_skips = 0
        self.resumed_from: Path | None = None
        self.signals = StopSignals(lambda: self.step)  # stop signals received while training
        self.trackers: Trackers | None = None  # rank 0's experiment trackers (trainer.report_to)
        # A host copy of the best model so far, when an objective relabels with it (else None).
        self.best_weights: dict[str, torch.Tensor] | None = None
        # What setup() builds (sftcli/engine/build.py), each assigned there and only there.
        self.precision: str = "fp32"
        self.data: DataBundle  # the text sets, labels and label names
        self.plan: build.Plan  # the run's steps and a self-training round's length, recorded in config.yaml
        self.class_weights: np.ndarray | None = None  # the cross-entropy's weight per class (loss.class_weights)
        self.tokenizer: Any = None
        self.pad_id = 0
        self.enc_val: Encoded | None = None  # token ids of the validation and test sets
        self.enc_test: Encoded | None = None
        self.enc_unlabeled: LazyTokens | None = None  # the unlabeled texts' (with a strategy or model.class_prior)
        # The labeled texts' class prior, and the prior the model trains under now (sftcli/prior.py).
        self.labeled_prior: np.ndarray | None = None
        self.train_prior: np.ndarray | None = None
        self.model: torch.nn.Module  # the classifier as built (evaluation and checkpoints read it)
        self.objectives: list[Objective] = []
        self.ddp_model: torch.nn.Module  # the training forward: the model wrapped for DDP (and compiled)
        self.average: WeightAverage | None = None  # trainer.ema_decay: the averaged weights
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR
        self.scaler: torch.amp.GradScaler | None = None  # fp16 only
        self.batches: StepBatches  # both data streams, positioned (their state goes into checkpoints)

    def setup(self) -> None:
        """Build what the loop reads, in a fixed order (sftcli/engine/build.py), then resume and start the
        trackers."""
        cfg, tc, env = self.cfg, self.tc, self.env
        hf_logging.disable_progress_bar()  # sft shows its own progress; no per-save bars from transformers
        self.precision = resolve_precision(tc.precision, env.device)
        state.seed_everything(cfg.seed)
        self.data, self.plan, self.class_weights = build.setup_data(cfg)
        self.max_steps = self.plan.max_steps
        tokens = build.setup_tokens(cfg, self.data)
        self.tokenizer, self.pad_id = tokens.tokenizer, tokens.pad_id
        self.enc_val, self.enc_test, self.enc_unlabeled = tokens.validation, tokens.test, tokens.unlabeled
        self.labeled_prior = self.train_prior = prior.labeled_prior(self.data.labeled.labels, len(self.data.label_names))
        self.model = build.setup_model(cfg, self.data)
        self.objectives = build.setup_objectives(cfg, self.plan, self.model, self.data, tokens, env, self.class_weights)
        self.ddp_model, self.average = build.setup_device(self.model, self.objectives, tc, env, self.precision)
        self.optimizer, self.scheduler = build.setup_optimizer(cfg, self.named_parameters(), self.max_steps,
                                                               self.objectives)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        build.check_disk_space(self.run_dir, self.model, self.named_parameters(), self.average is not None)
        unlabeled = tokens.unlabeled if cfg.strategy is not None else None
        self.batches = StepBatches(cfg, self.data, tokens.labeled, unlabeled, self.tokenizer, self.pad_id, env)
        if env.is_main:
            ckpt.clean_temporary(self.ckpt_dir)
        if env.is_main:
            # config.yaml records the run as it runs: the validated config, with the steps of trainer.epochs
            # and the length of a self-training round, known only now that the labeled set is loaded.
            write_run_config(self.run_dir, cfg, self.plan.record())
        if self.cfg.resume is not None:
            state.resume(self)
        if self.env.is_main:
            # Last, right before training: a resumed run's trackers continue from the step resumed from.
            self.trackers = build_trackers(self.cfg, self.run_dir, self.step if self.resumed_from else None)
            self.metrics.mirror = self.trackers
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s (%s, head reads %s; %.1fM parameters; texts cut at %d tokens), device %s, "
                 "%d process(es), precision %s", type(self.model).__name__, type(self.model.base_model).__name__,
                 head_pooling_of(self.model), n_params / 1e6, self.cfg.model.max_length, self.env.device,
                 self.env.world_size, self.precision)

    # ------------------------------------------------------------------------------------------------
    # the loop

    def train(self) -> dict[str, Any]:
        tc, env = self.tc, self.env
        self.signals.install()
        progress = Progress(tc.progress, self.max_steps, self.step, enabled=env.is_main)
        self.model.train()  # from_pretrained returns a model in eval mode; evaluation switches back
        log.info("training: steps %d -> %d, strategy %s, objectives %s", self.step, self.max_steps,
                 self.cfg.strategy.name if self.cfg.strategy else "none (supervised baseline)",
                 ", ".join(o.name for o in self.objectives))
        status, summary = "failed", None
        try:
            with speedups.malloc_tuning(self.model, tc, env.device):
                self._loop(progress)
            progress.close()
            summary = finish(self)
            status = "completed"
            return summary
        except Preempted:
            status = "preempted"
            raise
        finally:
            progress.close()
            self.signals.restore()
            if self.trackers is not None:
                self.trackers.finish(summary, status)
            self.metrics.close()

    def _loop(self, progress: Progress) -> None:
        """Steps until trainer.max_steps (or early stopping): step, agree, update, log, evaluate, save."""
        tc, env = self.tc, self.env
        window = MetricWindow(env)
        # A run resumed from the checkpoint that early stopping saved has stopped already.
        while self.step < self.max_steps and not self.early_stopping.stopped:
            faults.at_step_start(self.step + 1, env.rank)
            t0 = time.perf_counter()
            self.before_step()  # the objectives' hooks: e.g. self-training re-labels every N steps
            loss, terms, ratios = self._step()
            grad_norm = self._clip_gradients()
            bad_local = ~torch.isfinite(loss)
            if self.scaler is None:
                # fp16: overflowing gradients are the grad scaler's business (it skips the step and
                # lowers the scale); a non-finite loss still stops training.
                bad_local = bad_local | ~torch.isfinite(grad_norm)
            # The step's one host sync: no update when any rank saw a non-finite value, and a stop
            # signal on any rank stops all; one collective decides both.
            bad, stop = dist.any_flag(env, bad_local, self.signals.received > 0)
            if bad:
                self._handle_nonfinite(terms, grad_norm)
            else:
                self._optimizer_step()
                if self.average is not None:
                    self.average.update(self.model)
            window.lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self._account(window, loss, terms, ratios, grad_norm)
            window.end_step(time.perf_counter() - t0, self.batches.samples, self.batches.tokens, bad)

            last = self.step == self.max_steps
            if self.step % tc.log_every == 0 or last:
                progress.update(self.step, self._flush(window))
                window = MetricWindow(env)
            improved = stopping = False
            if (tc.eval_every and self.step % tc.eval_every == 0) or last:
                best_before = self.best_metric
                improved = self._validate()
                stopping = self._early_stop(best_before)
                if stopping and window.steps:
                    progress.update(self.step, self._flush(window))  # the steps since the last log line
                    window = MetricWindow(env)
            if stop:
                state.save(self)
                raise Preempted(self._preempted_message())
            if (tc.save_every and self.step % tc.save_every == 0) or last or improved or stopping:
                state.save(self)  # a stop's checkpoint is the run's last, as at max_steps

    def _step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """One step's forward and backward: the batches, one forward over them, every objective's terms.
        Returns the local loss, its terms and the diagnostics (detached)."""
        batch = self.batches.next(self.step, self._unlabeled_rows())
        if batch.unlabeled_index is not None:
            batch.pseudo_labels = next((p for o in self.objectives
                                        if (p := o.labels_of(batch.unlabeled_index)) is not None), None)
        wants_hidden = any(o.wants_hidden_states(batch) for o in self.objectives)
        length = batch.inputs["input_ids"].shape[1]
        with autocast(self.env.device, self.precision), \
                speedups.attention_context(self.env.device, self.precision, length, self.tc):
            out = self.ddp_model(**batch.inputs, output_hidden_states=wants_hidden)
        view = StepView(batch, out, self.env, self.precision, self.model)
        if batch.has_unlabeled and any(o.uses_weak_view for o in self.objectives):
            view.weak_logits = self._weak_logits(batch.clean_unlabeled)
        loss = torch.zeros((), device=self.env.device)
        terms: list[Term] = []
        ratios: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for objective in self.objectives:
            contribution = objective.contribute(view)
            for term in contribution.terms:
                loss = loss + term.weight * term.value
            terms += contribution.terms
            ratios.update(contribution.ratios)
        if not batch.has_labeled:
            # Under DDP every parameter must take part in each backward; the classifier head does not in
            # an unlabeled-only step, so it joins with a zero-weight term.
            loss = loss + 0.0 * out.logits.float().sum()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        detached = {t.name: t.value.detach() for t in terms}
        return loss.detach(), detached, {k: (n.detach(), d.detach()) for k, (n, d) in ratios.items()}

    def _unlabeled_rows(self) -> UnlabeledRows | None:
        """The unlabeled texts this step's terms read: none, all, or the one subset they all read."""
        wanted = [rows for o in self.objectives if (rows := o.unlabeled_rows()) is not None]
        if not wanted:
            return None
        if any(rows.index is None for rows in wanted) or len({rows.key for rows in wanted}) > 1:
            return ALL_UNLABELED
        return wanted[0]

    @torch.no_grad()
    def _weak_logits(self, rows: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Classifier logits of the unlabeled rows as read, without dropout (the lightly perturbed view)."""
        from sftcli.engine.batches import to_device

        assert rows is not None
        self.model.eval()
        try:
            with autocast(self.env.device, self.precision):
                return self.model(**{k: to_device(v, self.env.device) for k, v in rows.items()}).logits.float()
        finally:
            self.model.train()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to optim.max_grad_norm; returns the total norm before clipping (on the device: no sync)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for _, p in self.named_parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.env.device)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if self.cfg.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.max_grad_norm, norm, foreach=True)
        return norm

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _handle_nonfinite(self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        """All ranks agreed that some rank saw a non-finite value: stop (default) or skip the step."""
        mine = [name for name, v in terms.items() if not torch.isfinite(v).all()]
        if not mine and not math.isfinite(float(grad_norm)):
            mine = ["gradient norm"]
        reports = dist.all_gather_object(self.env, mine)
        where = "; ".join(f"rank {r}: {', '.join(term_title(t) for t in names)}"
                          for r, names in enumerate(reports) if names)
        step = self.step + 1
        if self.scaler is not None:
            self.scaler.update()  # fp16: the scaler lowers its scale; the step is skipped
        if self.tc.nonfinite == "skip":
            self.nonfinite_skips += 1
            log.warning("step %d: non-finite value (%s); update skipped on all ranks (%d/%d skips)", step, where,
                        self.nonfinite_skips, self.tc.max_nonfinite_skips)
            self.metrics.write(step, {"train/nonfinite_skips": self.nonfinite_skips})
            if self.nonfinite_skips >= self.tc.max_nonfinite_skips:
                raise NonFiniteError(f"step {step}: {self.nonfinite_skips} non-finite steps skipped, the limit "
                                     f"trainer.max_nonfinite_skips={self.tc.max_nonfinite_skips}; last: {where}")
            return
        raise NonFiniteError(f"step {step}: non-finite {where}; stopped before the optimizer step (no checkpoint "
                             f"holds these weights). Lower optim.lr, or set trainer.nonfinite=skip to skip such steps")

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is evaluated, re-labels, and goes into checkpoints: the moving average of the weights
        with trainer.ema_decay, else the trained model itself."""
        return self.average.module if self.average is not None else self.model

    @property
    def keeps_best_weights(self) -> bool:
        """Whether an objective needs the best model so far (a host copy, refreshed at each new best)."""
        return any(o.wants_best_weights for o in self.objectives)

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every trained parameter: the model's, then the objectives' own (a projection head)."""
        named = list(self.model.named_parameters())
        for objective in self.objectives:
            named += objective.named_parameters()
        return named

    def before_step(self) -> None:
        """Every objective's hook before a step, with a read-only view of the run; what they ask for is
        carried out here, in order: a restart from weights, the prior trained under, metrics to report."""
        for objective in self.objectives:
            run = RunView(self.step, self.env, self.labeled_prior, self.train_prior, self.data.label_names,
                          self.best_step, self.best_weights is not None, self._predict)
            for request in objective.before_step(run):
                if isinstance(request, Restart):
                    self.restart_from(request.weights)
                elif isinstance(request, SetTrainPrior):
                    self.train_prior = request.prior
                elif self.env.is_main:
                    self.metrics.write(self.step, request.values)
                    log.info("%s: step %d: %s", request.what, self.step,
                             format_metrics(request.values, sorted(request.values)))

    def _predict(self, texts: TokenRows, best: bool) -> np.ndarray:
        """Logits of `texts` by the model as it is, or by the best model so far (loaded into the evaluated
        model's slot: only an objective that restarts the model right after asks for it)."""
        if best:
            assert self.best_weights is not None
            self.eval_model.load_state_dict(self.best_weights, strict=False)
        return predict_logits(self.eval_model, texts, self.tc.eval_batch_size, self.pad_id, self.env.device,
                              self.precision, self.env)

    def restart_from(self, weights: dict[str, torch.Tensor]) -> None:
        """A fresh start of the trained model (self-training students): these weights, every objective's
        own parameters reset, and a new optimizer state (AdamW builds its moments again on the next step)."""
        self.model.load_state_dict(weights)
        if self.average is not None:
            self.average.reset(self.model)
        for objective in self.objectives:
            objective.reset()
        self.optimizer.state.clear()
        # A new model gets its own patience: the evaluations its predecessor spent without beating the best
        # say nothing about it (it is compared with the run's best all the same).
        self.early_stopping.counter = 0

    # ------------------------------------------------------------------------------------------------
    # the training state (checkpoint files and their checks: state.py, sftcli/checkpoint.py)

    def state_dict(self) -> dict[str, Any]:
        """Everything the loop needs to continue exactly (weights and RNG aside: state.py writes those)."""
        best_name = ckpt.checkpoint_name(self.best_step) if self.best_step is not None else None
        assert self.train_prior is not None
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "streams": self.batches.state_dict(),
            "best": {"metric": self.best_metric, "step": self.best_step, "checkpoint": best_name},
            "nonfinite_skips": self.nonfinite_skips,
            "early_stopping": self.early_stopping.state_dict(),
            "objectives": {o.name: o.state_dict() for o in self.objectives},
            "average": self.average.state_dict(self.model) if self.average is not None else None,
            "world_size": self.env.world_size,
            # The class prior these weights were trained under (model.class_prior reads it at the end).
            "train_prior": [float(p) for p in self.train_prior],
        }

    def load_state_dict(self, saved: dict[str, Any], own_run: bool = True) -> None:
        """Continue from `saved` (state_dict's), the weights already loaded into eval_model. From another run's
        checkpoint (own_run=False), its best stays there: this run selects its own best from scratch."""
        averaged = saved.get("average")
        if self.average is not None and averaged is not None:
            self.average.load_state_dict(averaged, self.model)  # the raw weights the optimizer trains
        elif averaged is not None:
            self.model.load_state_dict(averaged["raw_model"])  # trained with an average, resumed without one
        elif self.average is not None:
            # Trained without an average, resumed with one (allow_resume_mismatch): it starts from these weights.
            self.model.load_state_dict(self.eval_model.state_dict())
            self.average.reset(self.model)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.batches.load_state_dict(saved["streams"])
        self.step = int(saved["step"])
        if own_run:
            self.best_metric, self.best_step = saved["best"]["metric"], saved["best"]["step"]
            # Counted against the best restored with it (absent from states written before early stopping).
            self.early_stopping.load_state_dict(saved.get("early_stopping", {}))
        self.nonfinite_skips = int(saved["nonfinite_skips"])
        # Absent from states written before the class prior was recorded: those trained under the labeled one.
        self.train_prior = np.asarray(saved.get("train_prior", self.labeled_prior), dtype=np.float64)
        for objective in self.objectives:
            objective.load_state_dict(saved["objectives"].get(objective.name, {}))

    # ------------------------------------------------------------------------------------------------
    # metrics and evaluation

    def _account(self, window: MetricWindow, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                 ratios: dict[str, tuple[torch.Tensor, torch.Tensor]], grad_norm: torch.Tensor) -> None:
        # Local shares that sum over ranks to global figures; no host sync until the log step.
        # train/loss is each step's L_sup + lambda * L_con (+ the other weighted terms) as summed.
        window.add_step_mean("train/loss", loss)
        for name, value in terms.items():
            window.add_step_mean(f"train/loss_{name}", value)
        for name, (num, den) in ratios.items():
            window.add(f"train/{name}", num, den)
        window.add_finite_step_mean("train/grad_norm", grad_norm)  # before clipping; the same on every rank

    def _flush(self, window: MetricWindow) -> dict[str, Any]:
        values: dict[str, Any] = window.reduce()
        for objective in self.objectives:
            if f"train/loss_{objective.name}" in values:
                values.update(objective.window_values(self.step))
        values["train/lr"] = window.lr
        values["train/epoch_labeled"] = self.batches.epoch_labeled()
        self.metrics.write(self.step, values)
        return values

    def _validate(self) -> bool:
        """Evaluate on validation; True when this is a new best (non-finite metrics never are)."""
        result = evaluate(self.eval_model, self.enc_val, self.data.validation.labels, self.data.label_names,
                          self.tc.eval_batch_size, self.pad_id, self.env.device, self.precision, self.env)
        values = scalar_metrics(result, "val")
        self.metrics.write(self.step, values)
        metric = self.val_metric = values.get(self.tc.select_metric)
        if metric is None:
            raise ConfigError(f"trainer.select_metric: {self.tc.select_metric!r} is not a validation metric; "
                              f"choose one of {sorted(values)}")
        shown = list(dict.fromkeys(["val/accuracy", "val/macro_f1", self.tc.select_metric]))
        log.info("step %d: val %s", self.step, format_metrics(values, shown))
        if math.isfinite(metric) and (self.best_metric is None or metric > self.best_metric):
            self.best_metric, self.best_step = metric, self.step
            if self.keeps_best_weights:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}
            return True
        return False

    def _early_stop(self, best_before: float | None) -> bool:
        """Count this evaluation for early stopping; True when training stops now. Every rank computes the
        metric from the same gathered logits, and the decision still goes through one collective, as every
        stop decision does, so no rank trains on alone."""
        es = self.early_stopping
        if not es.enabled:
            return False
        assert self.val_metric is not None
        es.update(self.val_metric, best_before)
        self.metrics.write(self.step, {"early_stopping/counter": es.counter})
        (stopping,) = dist.any_flag(self.env, es.stopped)
        if stopping and self.step < self.max_steps:
            log.info("early stopping at step %d: %s did not improve for %d evaluation(s) in a row (best %s at step "
                     "%s)", self.step, self.tc.select_metric, es.counter, format_value(self.best_metric),
                     self.best_step)
        return stopping

    def _preempted_message(self) -> str:
        if self.tc.save_only_model:
            return (f"stopped by a signal at step {self.step}; trainer.save_only_model=true keeps no training "
                    "state, so this run cannot be resumed")
        return f"stopped by a signal at step {self.step}; checkpoint saved; continue with resume=auto"
