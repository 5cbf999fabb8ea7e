"""The training loop: setup, then `train()` reads top to bottom (step, log, evaluate, save).

One Trainer runs in each worker process. Everything distributed goes through `sftcli.dist`; rank 0
writes files; stop decisions (max steps, signals, non-finite values) are agreed across ranks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli import checkpoint as ckpt
from sftcli import cluster, dist, faults, malloc
from sftcli.config import TrainConfig, to_plain
from sftcli.data import (
    BatchStream,
    DataBundle,
    Encoded,
    NpyRows,
    collate,
    encode,
    load_data,
    mask_tokens,
    pad_concat,
    rank_slice,
)
from sftcli.embedgrad import EmbeddingGradRows, embedding_grad_rows_possible
from sftcli.errors import CheckpointError, NonFiniteError, Preempted
from sftcli.evaluate import autocast, evaluate, predict_logits, resolve_precision, scalar_metrics
from sftcli.losses import consistency_loss, info_nce, select_pseudo_labels, softmax, supervised_loss
from sftcli.model import (
    ResidualProjection,
    build_model,
    cls_only_possible,
    enable_cls_only_last_layer,
    load_tokenizer,
    pool,
    tokenizer_fingerprint,
    use_int_mask_dropout,
    weights_fingerprint,
)
from sftcli.runlog import MetricsWriter, format_metrics, setup_logging
from sftcli.strategy import CONTRASTIVE, MIX, SUPERVISED, step_kind
from sftcli.teacher import teacher_representations

# Name prefix of the projection head's parameters among the trained ones (optimizer groups).
PROJECTION = "contrastive_projection"

log = logging.getLogger("sft")

# Fields that must match between a checkpoint and the resuming config (unless allow_resume_mismatch).
RESUME_FIELDS = ("seed", "model", "data", "strategy", "loss", "trainer.batch_size", "trainer.unlabeled_batch_size",
                 "trainer.nproc")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_root(cfg: TrainConfig) -> Path:
    import os

    return Path(cfg.cache_dir or os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft").expanduser()


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, env: dist.DistEnv):
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self.tc = cfg.trainer
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=env.is_main)
        self.step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.nonfinite_skips = 0
        self.resumed_from: Path | None = None
        self.stop_requested = 0
        self.last_local: dict[str, np.ndarray] = {}
        self.initial_state: dict[str, torch.Tensor] | None = None
        self.initial_projection: dict[str, torch.Tensor] | None = None  # the projection head's, likewise

    # ------------------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # sft shows its own progress; no per-save bars from transformers
        self.precision = resolve_precision(self.tc.precision, env.device)
        seed_everything(cfg.seed)
        self.data: DataBundle = load_data(cfg.data, cfg.seed)
        for note in self.data.notes:
            log.info("data: %s", note)
        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cache = cache_root(cfg)
        tok_fp = tokenizer_fingerprint(self.tokenizer)

        def enc(ts: Any, name: str) -> Encoded | None:
            if ts is None:
                return None
            out = encode(ts, self.tokenizer, cfg.model.max_length, cache, tok_fp)
            if out.truncated:
                log.info("data: %d of %d %s texts truncated to model.max_length=%d tokens", out.truncated,
                         len(out), name, cfg.model.max_length)
            return out

        self.enc_labeled = enc(self.data.labeled, "labeled")
        self.enc_val = enc(self.data.validation, "validation")
        self.enc_test = enc(self.data.test, "test")
        self.use_unlabeled = cfg.strategy is not None
        self.enc_unlabeled = enc(self.data.unlabeled, "unlabeled") if self.use_unlabeled else None
        if self.use_unlabeled and (self.enc_unlabeled is None or len(self.enc_unlabeled) == 0):
            from sftcli.errors import DataError

            raise DataError("a strategy needs unlabeled texts: set data.labels_per_class (the rest of train becomes "
                            "unlabeled) or data.unlabeled=FILE")

        self.model = build_model(cfg.model, self.data.label_names, cfg.seed)
        # Self-training with fresh students: each re-label restarts from these weights (host copy).
        if self.use_unlabeled and cfg.loss.self_training_weight > 0 and cfg.loss.self_training_student == "fresh":
            self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.teacher: torch.nn.Module | None = None
        self.teacher_reps: NpyRows | None = None
        # Self-training's pseudo-labels of the unlabeled set (-1: not used), refreshed every few steps.
        self.pseudo_labels: np.ndarray | None = None
        self.pseudo_probs: np.ndarray | None = None  # with soft targets: the labeling model's probabilities
        # With self_training_ensemble: the mean probabilities of every labeling model so far.
        self.ensemble_probs: np.ndarray | None = None
        if self.use_unlabeled:
            # The frozen pretrained encoder: a copy of the initial weights, eval mode, never updated.
            teacher = copy.deepcopy(self.model.base_model).eval().requires_grad_(False)
            if cfg.loss.teacher_cache:
                self.teacher_reps = teacher_representations(
                    teacher, self.enc_unlabeled, cfg.model.pooling, self.pad_id, cache,
                    key_parts=(weights_fingerprint(teacher), tok_fp, str(cfg.model.max_length), cfg.model.pooling,
                               self.data.fingerprint()),
                    env=env, batch_size=self.tc.eval_batch_size, precision="fp32")
            else:
                self.teacher = teacher.to(env.device)
        if self.tc.cls_only_last_layer:
            # After the teacher's copy: the frozen encoder's last layer always runs in full.
            why = "torch.compile is on" if self.tc.compile else cls_only_possible(self.model)
            if why is None:
                enable_cls_only_last_layer(self.model)
            else:
                log.info("model: trainer.cls_only_last_layer does not apply (%s); the last layer runs in full", why)
        if self.tc.cpu_dropout == "int_mask" and env.device.type == "cpu" and not self.tc.compile:
            use_int_mask_dropout(self.model)
        self.model.to(env.device)
        self.ddp_model = dist.wrap_model(env, self.model)
        # The contrastive term's projection head: trained with the model, saved in the training state
        # (it is not part of the classifier, so exported checkpoints do not carry it).
        self.projection: torch.nn.Module | None = None
        self.ddp_projection: torch.nn.Module | None = None
        if self.use_unlabeled and cfg.loss.projection == "mlp":
            with torch.random.fork_rng(devices=[]):  # its own init draws; the run's RNG stream is unchanged
                torch.manual_seed(cfg.seed)
                self.projection = ResidualProjection(self.model.config.hidden_size).to(env.device)
            self.ddp_projection = dist.wrap_model(env, self.projection)
            if self.initial_state is not None:
                self.initial_projection = {k: v.detach().clone() for k, v in self.projection.state_dict().items()}
        if self.tc.compile:
            # The training forward only (evaluation and checkpoints use the plain module). dynamic=True:
            # dynamically padded batches change shape every step, and one graph serves them all.
            self.ddp_model = torch.compile(self.ddp_model, dynamic=True)
            log.info("model: the training forward is compiled (torch.compile); the first steps compile it")

        # The word embedding's gradient in a kept buffer, read and cleared row by row (sftcli/embedgrad.py).
        self.embedding_grad: EmbeddingGradRows | None = None
        if self.tc.embedding_grad_rows:
            why = "torch.compile is on" if self.tc.compile else embedding_grad_rows_possible(self.model)
            if why is None:
                self.embedding_grad = EmbeddingGradRows(self.model.get_input_embeddings(), env.distributed)
            else:
                log.info("model: trainer.embedding_grad_rows does not apply (%s); dense embedding gradient", why)

        self.optimizer = self._build_optimizer()
        self.clip_scale: torch.Tensor | None = None  # optim.fused_clipping: this step's clipping divisor
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        # A full disk found now, not at the first save: a checkpoint holds the weights and AdamW's two
        # moments of every trained parameter (and a save writes the new one before pruning old ones).
        trained = sum(p.numel() * 4 for _, p in self._named_parameters() if p.requires_grad)
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        ckpt.check_free_space(self.run_dir, int(1.1 * (weights + 2 * trained)))
        lengths = None
        if cfg.data.length_grouping:
            lengths = self.enc_labeled.lengths()
        self.labeled_stream = BatchStream(len(self.enc_labeled), self.tc.batch_size, cfg.seed, 0, lengths)
        self.unlabeled_stream = None
        if self.use_unlabeled:
            ulen = self.enc_unlabeled.lengths() if cfg.data.length_grouping else None
            self.unlabeled_stream = BatchStream(len(self.enc_unlabeled), self.tc.unlabeled_batch_size, cfg.seed, 1,
                                                ulen)
        if env.is_main:
            ckpt.clean_temporary(self.ckpt_dir)
        if cfg.resume is not None:
            self._resume()
        if self.tc.tensorboard and env.is_main:
            from sftcli.tb import TensorBoardWriter

            # purge_step hides events an interrupted attempt logged after the step resumed from.
            self.metrics.mirror = TensorBoardWriter(self.run_dir, True,
                                                    purge_step=self.step + 1 if self.resumed_from else None)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s (%.1fM parameters), device %s, %d process(es), precision %s",
                 type(self.model).__name__, n_params / 1e6, env.device, env.world_size, self.precision)

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every trained parameter: the model's, then the projection head's (when there is one)."""
        named = list(self.model.named_parameters())
        if self.projection is not None:
            named += [(f"{PROJECTION}.{n}", p) for n, p in self.projection.named_parameters()]
        return named

    def _load_initial_state(self) -> None:
        """Back to the initial weights (fresh self-training students)."""
        assert self.initial_state is not None
        self.model.load_state_dict(self.initial_state)
        if self.projection is not None:
            assert self.initial_projection is not None
            self.projection.load_state_dict(self.initial_projection)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self._named_parameters():
            if not p.requires_grad:
                continue
            # Biases and normalisation weights are not decayed (standard for BERT fine-tuning).
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        kwargs = {"lr": o.lr, "betas": (o.beta1, o.beta2), "eps": o.eps}
        if o.fused:
            # One fused kernel over all parameters; on CPU torch's default is a Python loop over ~100
            # tensors (MiniLM: 24 ms instead of 180 ms a step). Devices without the kernel fall back.
            try:
                return torch.optim.AdamW(groups, fused=True, **kwargs)
            except (RuntimeError, ValueError) as exc:
                log.info("optim: fused AdamW unavailable here (%s); using the default implementation", exc)
        return torch.optim.AdamW(groups, **kwargs)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        total, ratio = self.tc.max_steps, self.cfg.optim.warmup_ratio
        # Fresh self-training students each get the whole schedule (warmup, then decay to zero at the
        # end of their round), as a separate run would.
        period = self.cfg.loss.self_training_every if self.initial_state is not None else total

        def factor(step: int) -> float:
            start = (step // period) * period
            length = min(period, total - start)
            s, warmup = step - start, int(round(ratio * length))
            if warmup and s < warmup:
                return (s + 1) / warmup
            return max(0.0, (length - s) / max(1, length - warmup))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ------------------------------------------------------------------------------------------------
    # the loop

    def train(self) -> dict[str, Any]:
        tc, env = self.tc, self.env
        self._install_signal_handlers()
        window = self._new_window()
        progress = _Progress(tc.progress, tc.max_steps, self.step, enabled=env.is_main)
        # from_pretrained returns a model in eval mode; training needs dropout on (evaluation switches back).
        self.model.train()
        if tc.malloc_tuning:
            malloc.keep_large_blocks(malloc.largest_parameter_bytes(self.model))
        log.info("training: steps %d -> %d, strategy %s", self.step, tc.max_steps,
                 self.cfg.strategy.name if self.cfg.strategy else "none (supervised baseline)")
        try:
            while self.step < tc.max_steps:
                faults.at_step_start(self.step + 1, env.rank)
                t0 = time.perf_counter()
                kind = step_kind(self.cfg.strategy, self.step)
                self._maybe_relabel()
                loss, terms, info = self._forward_backward(kind)
                grad_norm = self._clip_gradients()
                bad_local = ~torch.isfinite(loss.detach())
                if self.scaler is None:
                    # fp16: overflowing gradients are the grad scaler's business (it skips the step and
                    # lowers the scale); a non-finite loss still stops training.
                    bad_local = bad_local | ~torch.isfinite(grad_norm)
                # The step's one host sync: the update must not happen when any rank saw a non-finite
                # value, and a stop signal on any rank stops all; one collective decides both.
                bad, stop = dist.any_flag(env, bad_local, self.stop_requested > 0)
                if bad:
                    self._handle_nonfinite(terms, grad_norm)
                else:
                    self._optimizer_step()
                window["lr"] = self.optimizer.param_groups[0]["lr"]  # the lr this step used
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.embedding_grad is not None:
                    self.embedding_grad.clear()
                self.step += 1
                self._accumulate(window, loss, terms, info, kind, time.perf_counter() - t0, skipped=bad,
                                 grad_norm=grad_norm)

                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    values = self._flush_window(window)
                    progress.update(self.step, values)
                    window = self._new_window()
                last = self.step == tc.max_steps
                improved = False
                if (tc.eval_every and self.step % tc.eval_every == 0) or last:
                    improved = self._validate()
                if stop:
                    self.save()
                    raise Preempted(f"stopped by a signal at step {self.step}; checkpoint saved; "
                                    f"continue with resume=auto")
                if (tc.save_every and self.step % tc.save_every == 0) or last or improved:
                    self.save()
            progress.close()
            return self.finish()
        finally:
            progress.close()
            self._restore_signal_handlers()
            self.metrics.close()

    def _unlabeled_batch(self) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        assert self.unlabeled_stream is not None and self.enc_unlabeled is not None
        global_idx = self.unlabeled_stream.next()
        local = rank_slice(global_idx, self.env.rank, self.env.world_size)
        self._record("unlabeled", global_idx, local)
        return collate(self.enc_unlabeled, local, self.pad_id), global_idx

    def _labeled_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        global_idx = self.labeled_stream.next()
        local = rank_slice(global_idx, self.env.rank, self.env.world_size)
        self._record("labeled", global_idx, local)
        labels = torch.from_numpy(self.data.labeled.labels[local])
        return collate(self.enc_labeled, local, self.pad_id), labels

    def _record(self, stream: str, global_idx: np.ndarray, local: np.ndarray) -> None:
        self.last_local[stream] = local
        # Test hook: SFT_TEST_RECORD_IDS=FILE appends every consumed global batch (rank 0) so tests can
        # check that resume neither skips nor repeats an example in either stream.
        path = os.environ.get("SFT_TEST_RECORD_IDS")
        if path and self.env.is_main:
            ids = self.data.labeled.ids if stream == "labeled" else self.data.unlabeled.ids
            with open(path, "a") as fh:
                fh.write(json.dumps({"step": self.step + 1, "stream": stream,
                                     "ids": ids[global_idx].tolist()}) + "\n")

    def _forward_backward(self, kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One step's forward and backward; returns the local loss, its terms and diagnostics (detached)."""
        env, dev = self.env, self.env.device
        terms: dict[str, torch.Tensor] = {}
        info: dict[str, torch.Tensor] = {}
        lab = unl = None
        if kind in (SUPERVISED, MIX):
            lab_batch, labels = self._labeled_batch()
            lab = (lab_batch, _to_device(labels, dev))
        if kind in (CONTRASTIVE, MIX):
            unl = self._unlabeled_batch()
        # One forward over labeled + unlabeled texts (a mix step) instead of two.
        if lab is not None and unl is not None:
            inputs = pad_concat(lab[0], unl[0], self.pad_id)
        else:
            inputs = lab[0] if lab is not None else unl[0]  # type: ignore[index]
        n_lab = 0 if lab is None else len(lab[1])
        lc = self.cfg.loss
        clean_unlabeled = None
        if unl is not None and lc.consistency_weight > 0:
            # The weak view (pseudo-label source) sees the unlabeled texts as they are; the training
            # forward sees them with dropout and, when set, masked tokens (the strong view).
            clean_unlabeled = {k: _to_device(v[n_lab:], dev) for k, v in inputs.items()}
        if unl is not None and lc.unlabeled_mask_prob > 0:
            # Input noise on the unlabeled rows of the training forward, for every unlabeled term: the
            # targets (frozen reps, pseudo-labels) come from the texts as they are, so the model has to
            # reach them from a corrupted view.
            inputs = self._mask_unlabeled(inputs, n_lab)
        inputs = {k: _to_device(v, dev) for k, v in inputs.items()}
        with autocast(dev, self.precision), self._attention_backend(inputs["input_ids"].shape[1]):
            out = self.ddp_model(**inputs, output_hidden_states=unl is not None)
        loss = torch.zeros((), device=dev)
        if lab is not None:
            terms["sup"] = faults.poison("sup", supervised_loss(out.logits[:n_lab], lab[1]), self.step + 1)
            loss = loss + terms["sup"]
        if unl is not None:
            u_logits = out.logits[n_lab:].float()
            weak = self._weak_logits(clean_unlabeled) if clean_unlabeled is not None else None
            preds = (weak if weak is not None else u_logits).detach().argmax(-1)
            con, info = self._contrastive(out.hidden_states[-1][n_lab:], inputs["attention_mask"][n_lab:], unl[1],
                                          preds)
            con = faults.poison("con", con, self.step + 1)
            terms["con"] = con
            loss = loss + self._con_weight() * con
            if weak is not None:
                cons, confident = consistency_loss(u_logits, weak, lc.consistency_threshold)
                # Sum over local rows / global batch, times world size: the global mean after DDP averaging.
                terms["cons"] = cons * env.world_size / len(unl[1])
                info["confident"] = confident
                loss = loss + lc.consistency_weight * terms["cons"]
            if self.pseudo_labels is not None and lc.self_training_weight > 0:
                local = rank_slice(unl[1], env.rank, env.world_size)
                targets = _to_device(torch.from_numpy(self.pseudo_labels[local]), dev)
                if self.pseudo_probs is not None:
                    # Soft targets: the teacher's whole distribution (distillation), not only its argmax.
                    probs = _to_device(torch.from_numpy(self.pseudo_probs[local]), dev)
                    per_text = -(probs * torch.log_softmax(u_logits, dim=-1)).sum(-1)
                else:
                    per_text = torch.nn.functional.cross_entropy(u_logits, targets.clamp_min(0), reduction="none")
                terms["st"] = (per_text * (targets >= 0)).sum() * env.world_size / len(unl[1])
                loss = loss + lc.self_training_weight * terms["st"]
            if lab is None:
                # Under DDP every parameter must take part in each backward; the classifier head does
                # not in an unlabeled-only step, so it joins with a zero-weight term.
                loss = loss + 0.0 * out.logits.float().sum()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        terms = {k: v.detach() for k, v in terms.items()}
        return loss.detach(), terms, info

    def _maybe_relabel(self) -> None:
        """Self-training: every `self_training_every` steps, the current classifier (eval mode, so no
        randomness: a resumed run re-labels exactly as the uninterrupted one) labels the whole unlabeled
        set, and a class-balanced share of its most confident predictions become the targets."""
        lc = self.cfg.loss
        if (lc.self_training_weight <= 0 or self.enc_unlabeled is None or self.step == 0
                or self.step % lc.self_training_every):
            return
        t0 = time.perf_counter()
        logits = predict_logits(self.model, self.enc_unlabeled, self.tc.eval_batch_size, self.pad_id,
                                self.env.device, self.precision, self.env)
        probs = softmax(logits)
        relabel = self.step // lc.self_training_every  # 1 at the first re-label
        if lc.self_training_ensemble:
            # Running mean over the labeling models of all rounds (an ensemble across rounds), in place
            # of the newest model alone.
            if self.ensemble_probs is not None:
                probs = (self.ensemble_probs * (relabel - 1) + probs) / relabel
            self.ensemble_probs = probs
        # Curriculum: each later re-label keeps a larger share (top, top + step, ...; at most all).
        share = min(1.0, lc.self_training_top + (relabel - 1) * lc.self_training_top_step)
        self.pseudo_labels, conf = select_pseudo_labels(probs, share, per_class=lc.self_training_select == "per_class")
        if lc.self_training_targets == "soft":
            self.pseudo_probs = probs
        if self.initial_state is not None:
            # The labeling model was the teacher; the student starts over from the initial weights with
            # a new optimizer state (AdamW builds its moments again on the next step).
            self._load_initial_state()
            self.optimizer.state.clear()
        kept = self.pseudo_labels >= 0
        values = {"self_training/kept": float(kept.mean()), "self_training/min_confidence":
                  float(conf[kept].min()) if kept.any() else float("nan"),
                  "self_training/seconds": time.perf_counter() - t0}
        truth = self.data.unlabeled.hidden_labels if self.data.unlabeled is not None else None
        if truth is not None and kept.any():
            # Only possible when the unlabeled texts came from labeled train (data.labels_per_class).
            values["self_training/pseudo_label_accuracy"] = float((self.pseudo_labels[kept] == truth[kept]).mean())
        if self.env.is_main:
            self.metrics.write(self.step, values)
            log.info("self-training: step %d: %s", self.step, format_metrics(values, sorted(values)))

    def _con_weight(self, step: int | None = None) -> float:
        """lambda of step `step` (1-based; default: the step being taken), ramped up linearly over
        loss.rampup_steps when set."""
        lc = self.cfg.loss
        assert lc.weight is not None
        if lc.rampup_steps:
            return lc.weight * min(1.0, (self.step + 1 if step is None else step) / lc.rampup_steps)
        return lc.weight

    def _mask_unlabeled(self, inputs: dict[str, torch.Tensor], n_lab: int) -> dict[str, torch.Tensor]:
        """Token masking of the unlabeled rows, drawn from (seed, step, rank) so a resumed run masks
        exactly as the uninterrupted one would."""
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            mask_id = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else self.pad_id
        gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.step) * 1024 + self.env.rank)
        ids = inputs["input_ids"]
        masked = mask_tokens(ids[n_lab:], inputs["attention_mask"][n_lab:], self.cfg.loss.unlabeled_mask_prob,
                             mask_id, self.tokenizer.all_special_ids, gen)
        return {**inputs, "input_ids": torch.cat([ids[:n_lab], masked])}

    def _attention_backend(self, length: int) -> contextlib.AbstractContextManager[Any]:
        """SDPA's math backend for short batches on CPU in bf16.

        With attention dropout 0, SDPA picks its flash kernel there, whose backward is slow on short texts
        (MiniLM, one thread, forward + backward: 195 against 112 ms at 32 x 16 tokens, 323 against 268 at
        8 x 128; flash wins from about 256 tokens on). With attention dropout > 0 SDPA picks the math
        backend anyway, so this changes nothing there (bitwise). The backward follows the forward's choice."""
        if self.env.device.type != "cpu" or self.precision != "bf16" or length > self.tc.sdpa_math_max_length:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    @torch.no_grad()
    def _weak_logits(self, sub: dict[str, torch.Tensor]) -> torch.Tensor:
        """Classifier logits of the unlabeled rows without dropout (the lightly perturbed view)."""
        self.model.eval()
        try:
            with autocast(self.env.device, self.precision):
                return self.model(**sub).logits.float()
        finally:
            self.model.train()

    def _contrastive(self, hidden: torch.Tensor, mask: torch.Tensor, global_idx: np.ndarray, preds: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        env, dev, pooling = self.env, self.env.device, self.cfg.model.pooling
        b = hidden.shape[0]
        local_idx = rank_slice(global_idx, env.rank, env.world_size)
        pooled = pool(hidden.float(), mask, pooling)
        q = pooled if self.ddp_projection is None else self.ddp_projection(pooled)
        if self.teacher_reps is not None:
            p = torch.from_numpy(np.asarray(self.teacher_reps[local_idx])).to(dev)
            p_global = None
            if self.cfg.loss.negatives == "pretrained":
                p_global = torch.from_numpy(np.asarray(self.teacher_reps[global_idx])).to(dev)
        else:
            assert self.teacher is not None and self.enc_unlabeled is not None
            batch = {k: v.to(dev) for k, v in collate(self.enc_unlabeled, local_idx, self.pad_id).items()}
            with torch.no_grad():
                p = pool(self.teacher(**batch).last_hidden_state.float(), batch["attention_mask"], pooling)
            p_global = dist.gather_with_grad(env, p) if self.cfg.loss.negatives == "pretrained" else None
        keys = p_global if p_global is not None else dist.gather_with_grad(env, q)
        # Negatives the classifier puts in the query's class: a diagnostic, and optionally masked out.
        all_preds = dist.gather_with_grad(env, preds)
        same = preds[:, None] == all_preds[None, :]
        rows = torch.arange(b, device=dev)
        same[rows, rows + env.rank * b] = False
        n_keys = all_preds.shape[0]
        if self.cfg.loss.negatives == "none":
            keys = None
        exclude = same if self.cfg.loss.mask_same_class else None
        total, stats = info_nce(q, p, keys, self.cfg.loss.tau, self_offset=env.rank * b, exclude=exclude)
        stats["same_class_neg"] = same.float().sum() / max(n_keys - 1, 1)
        # Sum over local rows / global batch size, times world size: DDP's gradient averaging then
        # yields exactly the single-process gradient of the global mean.
        n_global = len(global_idx)
        con = total * env.world_size / n_global
        with torch.no_grad():
            # Drift of what the encoder itself produces (before any projection head).
            drift = (1.0 - torch.nn.functional.cosine_similarity(pooled.detach(), p, dim=-1)).sum()
        stats = {**stats, "drift": drift, "count": torch.tensor(float(b), device=dev)}
        return con, stats

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to optim.max_grad_norm; returns the total norm before clipping (on the device: no sync)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.optim.max_grad_norm
        params = [p for _, p in self._named_parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.env.device)
        norm = self._grad_norm(params)
        if max_norm is None:
            return norm
        if self.cfg.optim.fused_clipping and self.scaler is None and self.optimizer.defaults.get("fused"):
            # Fused AdamW divides every gradient by its grad_scale as it reads it, so the clipping factor
            # rides along the optimizer's own sweep over the gradients instead of a multiply pass of its
            # own (the same factor as clip_grad_norm_: max_norm / (norm + 1e-6), at most 1).
            self.clip_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        return norm

    def _grad_norm(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The global gradient 2-norm (clip_grad_norm_'s), with the embedding's read from its written rows."""
        emb = self.embedding_grad
        if emb is None or not any(p is emb.weight for p in params):
            return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        rest = [p.grad for p in params if p is not emb.weight]
        norms = [emb.norm()] + ([torch.nn.utils.get_total_norm(rest, foreach=True)] if rest else [])
        return torch.linalg.vector_norm(torch.stack(norms))

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.clip_scale is not None:
            # torch's fused AdamW reads an optimizer attribute `grad_scale` (GradScaler's hook into it);
            # set for this one step only.
            self.optimizer.grad_scale = self.clip_scale  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                self.optimizer.grad_scale = None  # type: ignore[attr-defined]
                self.clip_scale = None
        else:
            self.optimizer.step()

    def _handle_nonfinite(self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        """All ranks agreed that some rank saw a non-finite value: stop (default) or skip the step."""
        mine = [name for name, v in terms.items() if not torch.isfinite(v).all()]
        if not mine and not math.isfinite(float(grad_norm)):
            mine = ["gradient"]
        reports = dist.all_gather_object(self.env, mine)
        where = "; ".join(f"rank {r}: {', '.join(_TERM_NAMES.get(t, t) for t in names)}"
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

    # ------------------------------------------------------------------------------------------------
    # logging

    def _new_window(self) -> dict[str, Any]:
        return {"sums": torch.zeros(_SLOTS, dtype=torch.float64, device=self.env.device), "steps": 0, "time": 0.0,
                "skipped": 0}

    def _accumulate(self, window: dict[str, Any], loss: torch.Tensor, terms: dict[str, torch.Tensor],
                    info: dict[str, torch.Tensor], kind: str, seconds: float, skipped: bool,
                    grad_norm: torch.Tensor) -> None:
        # Local contributions that sum over ranks to global figures; no host sync until the log step.
        w = self.env.world_size
        s = window["sums"]
        parts = torch.zeros(_SLOTS, dtype=torch.float64, device=self.env.device)
        if "sup" in terms:
            parts[0] = terms["sup"].double() / w       # global mean CE of this step
            parts[1] = 1.0 / w                         # steps with a supervised term
        if "con" in terms:
            parts[2] = terms["con"].double() / w       # global mean InfoNCE of this step
            parts[3] = 1.0 / w
            parts[4] = info["pos_sim"].double()
            parts[5] = info["top1"].double()
            parts[6] = info["drift"].double()
            parts[7] = info["count"].double()
            parts[8] = info["neg_sim"].double()
            parts[10] = info["same_class_neg"].double()
        if "cons" in terms:
            parts[11] = terms["cons"].double() / w
            parts[12] = 1.0 / w
            parts[13] = info["confident"].double()
        if "st" in terms:
            parts[14] = terms["st"].double() / w
            parts[15] = 1.0 / w
        # The total gradient norm before clipping (the same on every rank); non-finite ones are not averaged.
        finite = torch.isfinite(grad_norm)
        parts[16] = torch.where(finite, grad_norm.double(), 0.0) / w
        parts[17] = finite.double() / w
        # This step's total loss L_sup + lambda * L_con (+ the other weighted terms), as the forward summed
        # it (with the step's own ramped lambda), as a share of the global value.
        parts[9] = loss.double() / w
        s += parts
        window["steps"] += 1
        window["time"] += seconds
        window["skipped"] += int(skipped)
        window.setdefault("samples", 0)
        window.setdefault("tokens", 0)
        n_lab = self.tc.batch_size if kind in (SUPERVISED, MIX) else 0
        n_unl = self.tc.unlabeled_batch_size if kind in (CONTRASTIVE, MIX) else 0
        window["samples"] += n_lab + n_unl
        window["tokens_local"] = window.get("tokens_local", 0) + self._last_tokens(kind)

    def _last_tokens(self, kind: str) -> int:
        # Reads only this batch's offsets: lengths() of the whole set would cost O(corpus) every step.
        total = 0
        if kind in (SUPERVISED, MIX):
            total += _batch_tokens(self.enc_labeled, self.last_local["labeled"])
        if kind in (CONTRASTIVE, MIX):
            total += _batch_tokens(self.enc_unlabeled, self.last_local["unlabeled"])
        return total

    def _flush_window(self, window: dict[str, Any]) -> dict[str, Any]:
        sums = window["sums"].clone()
        extra = torch.tensor([float(window.get("tokens_local", 0)), window["time"]], dtype=torch.float64,
                             device=self.env.device)
        dist.all_reduce_sum(self.env, sums)
        dist.all_reduce_sum(self.env, extra)
        s = sums.tolist()
        steps = window["steps"]
        values: dict[str, Any] = {}
        n_sup, n_con = round(s[1]), round(s[3])
        sup = s[0] / n_sup if n_sup else None
        con = s[2] / n_con if n_con else None
        # train/loss: mean over the window's steps of each step's L_sup + lambda * L_con
        values["train/loss"] = s[9] / steps
        if sup is not None:
            values["train/loss_sup"] = sup
        if con is not None:
            values["train/loss_con"] = con
            values["train/con_pos_sim"] = s[4] / s[7]
            values["train/con_top1"] = s[5] / s[7]
            values["train/con_drift"] = s[6] / s[7]
            values["train/con_neg_sim"] = s[8] / s[7]
            values["train/con_same_class_neg"] = s[10] / s[7]
            values["train/lambda"] = self._con_weight(self.step)  # the window's last step, just taken
        if round(s[12]):
            values["train/loss_cons"] = s[11] / round(s[12])
            values["train/pseudo_label_rate"] = s[13] / s[7]
        if round(s[15]):
            values["train/loss_st"] = s[14] / round(s[15])
        if round(s[17]):
            values["train/grad_norm"] = s[16] / round(s[17])
        values["train/lr"] = window["lr"]
        values["train/epoch_labeled"] = self.labeled_stream.epoch + self.labeled_stream.offset / self.labeled_stream.n
        seconds = extra[1].item() / self.env.world_size
        if seconds > 0:
            values["perf/samples_per_s"] = window["samples"] / seconds
            values["perf/tokens_per_s"] = extra[0].item() / seconds
        if window["skipped"]:
            values["train/skipped_steps"] = window["skipped"]
        self.metrics.write(self.step, values)
        return values

    def _validate(self) -> bool:
        """Evaluate on validation; True when this is a new best (non-finite metrics never are)."""
        result = evaluate(self.model, self.enc_val, self.data.validation.labels, self.data.label_names,
                          self.tc.eval_batch_size, self.pad_id, self.env.device, self.precision, self.env)
        values = scalar_metrics(result, "val")
        self.metrics.write(self.step, values)
        metric = values.get(self.tc.select_metric)
        if metric is None:
            from sftcli.errors import ConfigError

            raise ConfigError(f"trainer.select_metric: {self.tc.select_metric!r} is not a validation metric; "
                              f"choose one of {sorted(values)}")
        log.info("step %d: %s", self.step, format_metrics(values, ["val/accuracy", "val/macro_f1"]))
        if math.isfinite(metric) and (self.best_metric is None or metric > self.best_metric):
            self.best_metric, self.best_step = metric, self.step
            return True
        return False

    # ------------------------------------------------------------------------------------------------
    # checkpoints

    def _rng_state(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        random.setstate(_to_tuple(state["python"]))
        n = state["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])

    def _fingerprints(self) -> dict[str, str]:
        return {"data": self.data.fingerprint()}

    def save(self) -> Path | None:
        """Commit a checkpoint of the whole training state (every rank calls; rank 0 writes)."""
        rng_states = dist.all_gather_object(self.env, self._rng_state())
        path = None
        if self.env.is_main:
            best_name = ckpt.checkpoint_name(self.best_step) if self.best_step is not None else None
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "streams": {"labeled": self.labeled_stream.state_dict(),
                            "unlabeled": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None},
                "best": {"metric": self.best_metric, "step": self.best_step, "checkpoint": best_name},
                "nonfinite_skips": self.nonfinite_skips,
                "pseudo_labels": None if self.pseudo_labels is None else torch.from_numpy(self.pseudo_labels),
                "pseudo_probs": None if self.pseudo_probs is None else torch.from_numpy(self.pseudo_probs),
                "ensemble_probs": None if self.ensemble_probs is None else torch.from_numpy(self.ensemble_probs),
                "projection": None if self.projection is None else self.projection.state_dict(),
                "world_size": self.env.world_size,
                "config": json.dumps(to_plain(self.cfg)),
                "fingerprints": self._fingerprints(),
            }

            def write(tmp: Path) -> None:
                self.model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
                torch.save(state, tmp / ckpt.TRAIN_STATE)
                for rank, rng in enumerate(rng_states):
                    torch.save(rng, tmp / f"rng_state_rank{rank}.pt")

            path = ckpt.save(self.ckpt_dir, self.step, write,
                             {"world_size": self.env.world_size, "select_metric": self.tc.select_metric,
                              "metric": self.best_metric if self.best_step == self.step else None})
            protect = {self.ckpt_dir / best_name} if best_name else set()
            if self.resumed_from is not None:
                protect.add(self.resumed_from)
            ckpt.apply_retention(self.ckpt_dir, self.tc.keep_last, protect)
            self.metrics.write(self.step, {"checkpoint/saved": path.relative_to(self.run_dir).as_posix()})
        dist.barrier(self.env)
        return path

    def _resume(self) -> None:
        cfg = self.cfg
        if cfg.resume == "auto":
            path = ckpt.newest_valid(self.ckpt_dir)
            if path is None:
                log.info("resume=auto: no valid checkpoint in %s; starting from step 0", self.ckpt_dir)
                return
        else:
            target = Path(cfg.resume)
            path = target if (target / ckpt.MANIFEST).exists() or ckpt.NAME_RE.match(target.name) else None
            if path is None:
                path = ckpt.newest_valid(target / "checkpoints")
                if path is None:
                    raise CheckpointError(f"resume={cfg.resume}: no valid checkpoint in {target / 'checkpoints'}")
            ckpt.verify(path)
        state = ckpt.load_state(path / ckpt.TRAIN_STATE)
        self._check_resume_config(json.loads(state["config"]), state, path)
        missing, unexpected = self.model.load_state_dict(ckpt.load_weights(path), strict=False)
        missing = [m for m in missing if m not in _tied_names(self.model)]
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]})")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.labeled_stream.load_state_dict(state["streams"]["labeled"])
        if self.unlabeled_stream is not None and state["streams"]["unlabeled"] is not None:
            self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        self.step = int(state["step"])
        self.best_metric = state["best"]["metric"]
        self.best_step = state["best"]["step"]
        self.nonfinite_skips = int(state["nonfinite_skips"])
        if state.get("pseudo_labels") is not None:
            self.pseudo_labels = state["pseudo_labels"].numpy()
        if state.get("pseudo_probs") is not None:
            self.pseudo_probs = state["pseudo_probs"].numpy()
        if state.get("ensemble_probs") is not None:
            self.ensemble_probs = state["ensemble_probs"].numpy()
        if self.projection is not None:
            if state.get("projection") is None:
                raise CheckpointError(f"{path}: loss.projection=mlp, but the checkpoint has no projection head")
            self.projection.load_state_dict(state["projection"])
        rng_file = path / f"rng_state_rank{self.env.rank}.pt"
        if rng_file.exists():
            self._set_rng_state(ckpt.load_state(rng_file))
        elif int(state["world_size"]) == self.env.world_size or not cfg.allow_resume_mismatch:
            raise CheckpointError(f"{path}: the RNG state of rank {self.env.rank} ({rng_file.name}) is missing")
        else:
            log.warning("resume: no RNG state for rank %d (world size changed); seeding it afresh", self.env.rank)
            seed_everything(cfg.seed + 1000 * self.env.rank + self.step)
        self.resumed_from = path
        dropped = self.metrics.truncate_after(self.step)
        log.info("resumed from %s at step %d%s", path, self.step,
                 f" (dropped {dropped} metrics events logged after it)" if dropped else "")

    def _check_resume_config(self, saved: dict[str, Any], state: dict[str, Any], path: Path) -> None:
        current = to_plain(self.cfg)
        diffs = []
        for field in RESUME_FIELDS:
            a, b = _get(saved, field), _get(current, field)
            diffs.extend(_diff(field, a, b))
        if state["fingerprints"].get("data") != self._fingerprints()["data"] and not any(
                d.startswith("data") for d in diffs):
            diffs.append("data: the data set content changed (fingerprint differs)")
        if diffs and not self.cfg.allow_resume_mismatch:
            lines = "\n".join(f"  - {d}" for d in diffs)
            raise CheckpointError(f"cannot resume from {path}: the config differs from the checkpoint's:\n{lines}\n"
                                  f"set allow_resume_mismatch=true to resume anyway")
        for d in diffs:
            log.warning("resume with a changed config: %s", d)

    # ------------------------------------------------------------------------------------------------
    # the end

    def finish(self) -> dict[str, Any]:
        """Test metrics of the best checkpoint, then summary.json (rank 0)."""
        items = ckpt.listed(self.ckpt_dir)
        last = ckpt.checkpoint_name(self.step)
        best = ckpt.checkpoint_name(self.best_step) if self.best_step is not None else last
        summary: dict[str, Any] = {
            "status": "completed",
            "best_checkpoint": f"checkpoints/{best}",
            "last_checkpoint": f"checkpoints/{last}",
            "best_step": self.best_step,
            "steps": self.step,
            "select_metric": self.tc.select_metric,
            "select_value": self.best_metric,
        }
        assert any(p.name == last for _, p in items) or not self.env.is_main, "the last checkpoint was not saved"
        # Evaluate exactly what the best checkpoint holds (the weights read back from disk).
        self.model.load_state_dict(ckpt.load_weights(self.ckpt_dir / best), strict=False)
        val = evaluate(self.model, self.enc_val, self.data.validation.labels, self.data.label_names,
                       self.tc.eval_batch_size, self.pad_id, self.env.device, self.precision, self.env)
        summary.update(scalar_metrics(val, "val"))
        if self.enc_test is not None and self.data.test is not None:
            test = evaluate(self.model, self.enc_test, self.data.test.labels, self.data.label_names,
                            self.tc.eval_batch_size, self.pad_id, self.env.device, self.precision, self.env)
            summary.update(scalar_metrics(test, "test"))
            summary["test/per_class"] = test["per_class"]
        else:
            summary["test"] = "skipped: the data has no test split"
        summary.update({
            "label_names": self.data.label_names,
            "n_labeled": len(self.data.labeled),
            "n_unlabeled": 0 if self.data.unlabeled is None else len(self.data.unlabeled),
            "world_size": self.env.world_size,
            "precision": self.precision,  # as run (trainer.precision=auto resolves per device)
            "strategy": self.cfg.strategy.name if self.cfg.strategy else None,
            "seed": self.cfg.seed,
            "data_notes": self.data.notes,
        })
        if self.env.is_main:
            final = {k: v for k, v in summary.items() if k.startswith(("test/", "val/")) and not isinstance(v, dict)}
            self.metrics.write(self.step, {f"final/{k}": v for k, v in final.items()})
            tmp = self.run_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=_json_default))
            tmp.replace(self.run_dir / "summary.json")
            log.info("done: best %s (%s=%.4f); test accuracy %s, macro-F1 %s", summary["best_checkpoint"],
                     self.tc.select_metric, self.best_metric if self.best_metric is not None else float("nan"),
                     _fmt(summary.get("test/accuracy")), _fmt(summary.get("test/macro_f1")))
        return summary

    # ------------------------------------------------------------------------------------------------
    # signals

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}

        def handler(signum: int, frame: Any) -> None:
            self.stop_requested += 1
            if self.stop_requested == 1:
                cluster.note_stop_signal(signum)
                log.warning("received %s: finishing step %d, saving a checkpoint, then exiting",
                            signal.Signals(signum).name, self.step + 1)
            else:
                log.warning("received %s again: already stopping (the checkpoint save is not interrupted)",
                            signal.Signals(signum).name)

        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        # SIGTERM and SIGINT, and in a submitit job submitit's own preemption signal (sftcli/cluster.py).
        for sig in cluster.stop_signals():
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)


_TERM_NAMES = {"sup": "loss_sup (cross-entropy)", "con": "loss_con (InfoNCE)", "cons": "loss_cons (consistency)",
               "st": "loss_st (self-training)", "gradient": "gradient norm"}
_SLOTS = 18  # accumulated figures per logging window (see _accumulate)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device; on CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _batch_tokens(enc: Encoded, index: np.ndarray) -> int:
    return int((enc.offsets[index + 1] - enc.offsets[index]).sum())


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _tied_names(model: torch.nn.Module) -> set[str]:
    names = set()
    for key in getattr(model, "_tied_weights_keys", None) or []:
        names.add(key)
    return names


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


def _diff(prefix: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys()):
            out.extend(_diff(f"{prefix}.{k}", a.get(k), b.get(k)))
        return out
    return [] if a == b else [f"{prefix}: checkpoint {a!r} != now {b!r}"]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


class _Progress:
    """A rich progress bar with live losses on a terminal; plain periodic lines otherwise."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool):
        self.enabled = enabled and mode != "none"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.bar = None
        if self.enabled and mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[losses]}"), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, losses="")
            self.bar.start()

    def update(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = format_metrics(values, ["train/loss", "train/loss_sup", "train/loss_con", "train/lr",
                                       "perf/samples_per_s"])
        if self.bar is not None:
            self.bar.update(self.task, completed=step, losses=text)
        else:
            log.info("step %d: %s", step, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run_worker(run_dir: str) -> dict[str, Any]:
    """Entry point of every worker process: read the run's config, train, return the summary."""
    from omegaconf import OmegaConf

    from sftcli.config import parse_train

    path = Path(run_dir)
    cfg = parse_train(OmegaConf.load(path / "config.yaml"))
    env = dist.init(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    setup_logging(path, env.is_main, env.rank)
    try:
        trainer = Trainer(cfg, path, env)
        trainer.setup()
        return trainer.train()
    finally:
        dist.close()

