"""Self-training (train/loss_st): the classifier's own confident predictions on the unlabeled texts as
targets, refreshed every loss.self_training_every steps.

At each re-label the current classifier (eval mode: no randomness, so a resumed run re-labels exactly as
the uninterrupted one) labels the unlabeled set, or a seeded sample of it (loss.self_training_sample: the
cost of a re-label then follows the sample, not the pile), and the most confident share becomes the targets
(per predicted class, or of all texts; a curriculum widens the share each round; hard or soft targets;
optionally the mean of every labeling model so far). With loss.self_training_student=fresh the labeling
model is the teacher: the student starts over from the initial weights with a new optimizer state and
its own lr schedule (rounds of self_training_every steps). With loss.self_training_teachers=T the first T
rounds are teachers, each from the initial weights on the labels alone, and the mean of their
probabilities labels the first student: an ensemble of teachers.

Until the first re-label the term reads no unlabeled text, so (with no other unlabeled term) those steps
draw none. With loss.self_training_draw=kept, later steps draw only the pseudo-labeled texts, so every
unlabeled row of a step carries a target; with all (the default), the texts left without one add nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from sftcli import prior
from sftcli.config import LossConfig
from sftcli.data import TokenRows, rank_slice
from sftcli.engine.steps import (
    ALL_UNLABELED,
    Contribution,
    Report,
    Request,
    Restart,
    RunView,
    SetTrainPrior,
    StepView,
    Term,
    UnlabeledRows,
)
from sftcli.losses import select_pseudo_labels, softmax
from sftcli.objectives.base import BuildContext, Objective

log = logging.getLogger("sft")


class SelfTraining(Objective):
    name = "st"

    def __init__(self, lc: LossConfig, unlabeled: TokenRows, hidden_labels: np.ndarray | None,
                 model: torch.nn.Module, class_weights: np.ndarray | None = None, every: int | None = None,
                 seed: int = 0):
        self.lc, self.unlabeled, self.hidden_labels, self.seed = lc, unlabeled, hidden_labels, seed
        # Steps between re-labels: the run's plan (a round's length with loss.self_training_rounds).
        self.every = lc.self_training_every if every is None else every
        self.class_weights = class_weights  # loss.class_weights, per class; None: unweighted
        self.wants_best_weights = lc.self_training_labeler == "best"
        # What the last re-label scored: positions in the unlabeled set, sorted (None: every text). The
        # arrays below are over these rows, so they hold what the sample needs, not the pile.
        self.rows: np.ndarray | None = None
        self.pseudo_labels: np.ndarray | None = None  # [rows], -1: not used
        self.pseudo_probs: np.ndarray | None = None  # with soft targets: the labeling model's probabilities
        self.ensemble_probs: np.ndarray | None = None  # with the ensemble: the mean over labeling models so far
        self.labeled_at: int | None = None  # the step of the last re-label (names its kept subset)
        self.kept_rows: UnlabeledRows | None = None  # with draw=kept: the pseudo-labeled texts, set at each re-label
        self.teacher_probs: np.ndarray | None = None  # with several teachers: the mean of those trained so far
        # Fresh students restart from these weights (a host copy of the initial model).
        self.initial_state: dict[str, torch.Tensor] | None = None
        if lc.self_training_student == "fresh":
            self.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def schedule_period(self) -> int | None:
        # Fresh teachers and students each get the whole schedule (warmup, then decay to zero at the end
        # of their round), as a separate run would.
        return self.every if self.initial_state is not None else None

    def labels_of(self, index: np.ndarray) -> np.ndarray | None:
        if self.pseudo_labels is None:
            return None
        if self.rows is None:
            return self.pseudo_labels[index]
        at, scored = self._positions(index)
        return np.where(scored, self.pseudo_labels[at], -1)

    def _positions(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the scored rows, whether scored) of unlabeled texts `index`; a text the last
        re-label did not score points at any position and is masked by the second array."""
        assert self.rows is not None
        at = np.searchsorted(self.rows, index).clip(max=len(self.rows) - 1)
        return at, self.rows[at] == index

    def sample(self, relabel: int, n: int) -> np.ndarray | None:
        """The rows re-label `relabel` (1-based) scores: a seeded draw of loss.self_training_sample texts of
        the `n` unlabeled ones (sorted), the same on every rank and after a resume; None: all of them."""
        size = self.lc.self_training_sample
        if size is None or size >= n:
            return None
        draw = relabel if self.lc.self_training_resample else 1
        # Generator.choice without replacement draws a small sample of a large pile in O(sample) memory.
        return np.sort(np.random.default_rng([self.seed, 43, draw]).choice(n, size, replace=False))

    def unlabeled_rows(self) -> UnlabeledRows | None:
        if self.pseudo_labels is None:
            return None  # no targets before the first re-label
        return ALL_UNLABELED if self.lc.self_training_draw == "all" else self.kept_rows

    def _set_kept_rows(self) -> None:
        # Once per re-label (and on resume), not every step: the index is a pass over the scored texts.
        kept = None if self.pseudo_labels is None else np.flatnonzero(self.pseudo_labels >= 0)
        if kept is not None and self.rows is not None:
            kept = self.rows[kept]
        self.kept_rows = UnlabeledRows(kept, key=self.labeled_at or 0) if kept is not None and len(kept) else None

    def before_step(self, run: RunView) -> list[Request]:
        lc = self.lc
        if run.step == 0 or run.step % self.every:
            return []
        t0 = time.perf_counter()
        labeler_step = run.step
        # The best model on validation so far labels, when asked for (the config requires fresh students
        # with this labeler, so the weights it is loaded into are replaced right after).
        best = self.wants_best_weights and run.has_best_weights
        if best:
            labeler_step = run.best_step
        done, teachers = run.step // self.every, lc.self_training_teachers  # models trained so far
        rows = self.sample(max(1, done - teachers + 1), len(self.unlabeled))
        logits = run.predict(self.unlabeled if rows is None else self.unlabeled.subset(rows), best)
        probs = softmax(logits)
        if teachers > 1 and done <= teachers:
            # A teacher is done: its probabilities join the running mean of the teachers so far, which
            # labels the first student once the last teacher is done.
            if self.teacher_probs is not None:
                probs = (self.teacher_probs * (done - 1) + probs) / done
            self.teacher_probs = probs
            if done < teachers:
                return self._next_teacher(done, t0, logits, rows)
        relabel = done - teachers + 1  # 1 at the re-label that labels the first student
        if lc.self_training_ensemble:
            # Running mean over the labeling models of all rounds (an ensemble across rounds), in place
            # of the newest model alone.
            if self.ensemble_probs is not None:
                probs = (self.ensemble_probs * (relabel - 1) + probs) / relabel
            self.ensemble_probs = probs
        values: dict[str, float] = {}
        if lc.self_training_prior == "unlabeled":
            # The labeling model's probabilities under the unlabeled texts' prior, not the prior it was
            # trained under (sftcli/prior.py), so the kept texts follow the pile's class balance.
            estimated = prior.estimate_prior(probs)
            probs = prior.reweight(probs, prior.logit_shift(estimated, run.train_prior))
            values.update({f"self_training/prior_{name}": float(p)
                           for name, p in zip(run.label_names, estimated, strict=True)})
        # Curriculum: each later re-label keeps a larger share (top, top + step, ...; at most all).
        share = min(1.0, lc.self_training_top + (relabel - 1) * lc.self_training_top_step)
        self.rows = rows
        self.pseudo_labels, conf = select_pseudo_labels(probs, share, per_class=lc.self_training_select == "per_class")
        if lc.self_training_targets == "soft":
            self.pseudo_probs = probs
        requests: list[Request] = [SetTrainPrior(self._train_prior(run.labeled_prior))]
        self.labeled_at = run.step
        self._set_kept_rows()
        if self.initial_state is not None:
            # The labeling model was the teacher; the student starts over from the initial weights with
            # a new optimizer state (AdamW builds its moments again on the next step).
            requests.append(Restart(self.initial_state))
        kept = self.pseudo_labels >= 0
        values.update({"self_training/kept": float(kept.mean()), "self_training/min_confidence":
                       float(conf[kept].min()) if kept.any() else float("nan"),
                       "self_training/seconds": time.perf_counter() - t0, "self_training/labeler_step": labeler_step})
        values["self_training/scored"] = float(len(kept))
        if self.hidden_labels is not None and kept.any():
            # Only possible when the unlabeled texts came from labeled train (data.labels_per_class).
            hidden = self.hidden_labels if rows is None else self.hidden_labels[rows]
            values["self_training/pseudo_label_accuracy"] = float((self.pseudo_labels[kept] == hidden[kept]).mean())
        return [*requests, Report("self-training", values)]

    def _train_prior(self, labeled_prior: np.ndarray) -> np.ndarray:
        """The prior the model trains under from now on: the labeled texts' and the kept pseudo-labels'."""
        assert self.pseudo_labels is not None
        kept = self.pseudo_labels >= 0
        pseudo = None
        if kept.any():
            pseudo = (self.pseudo_probs[kept].mean(0) if self.pseudo_probs is not None
                      else np.bincount(self.pseudo_labels[kept], minlength=len(labeled_prior)) / kept.sum())
        return prior.trained_prior(labeled_prior, pseudo, self.lc.self_training_weight)

    def _next_teacher(self, done: int, t0: float, logits: np.ndarray, rows: np.ndarray | None) -> list[Request]:
        """Teacher `done` (not the last) is done: the next starts from the initial weights, no text has a
        pseudo-label yet."""
        assert self.initial_state is not None  # the config requires fresh students with several teachers
        values = {"self_training/teacher": float(done), "self_training/seconds": time.perf_counter() - t0}
        if self.hidden_labels is not None:
            # Teachers score the same sample (resampling needs one teacher), so rows is this one's.
            hidden = self.hidden_labels if rows is None else self.hidden_labels[rows]
            values["self_training/teacher_accuracy"] = float((logits.argmax(1) == hidden).mean())
            values["self_training/teachers_accuracy"] = float((self.teacher_probs.argmax(1) == hidden).mean())
        return [Restart(self.initial_state), Report("self-training", values)]

    def contribute(self, view: StepView) -> Contribution:
        batch, env = view.batch, view.env
        if not batch.has_unlabeled or self.pseudo_labels is None:
            return Contribution()
        dev = env.device
        u_logits = view.unlabeled_logits
        local = rank_slice(batch.unlabeled_index, env.rank, env.world_size)
        at = local if self.rows is None else self._positions(local)[0]
        targets = torch.from_numpy(self.labels_of(local)).to(dev)
        if self.pseudo_probs is not None:
            # Soft targets: the teacher's whole distribution (distillation), not only its argmax.
            probs = torch.from_numpy(self.pseudo_probs[at]).to(dev)
            per_text = -(probs * torch.log_softmax(u_logits, dim=-1)).sum(-1)
        else:
            per_text = torch.nn.functional.cross_entropy(u_logits, targets.clamp_min(0), reduction="none")
        # Texts without a pseudo-label count as zero; over the global batch, times world size (DDP mean).
        if self.class_weights is None:
            value = (per_text * (targets >= 0)).sum() * env.world_size / len(batch.unlabeled_index)
        else:
            # loss.class_weights: a text weighs as its pseudo-label's class, in a weighted mean over the
            # global batch (a text without a pseudo-label keeps weight 1 and adds 0, as unweighted). Every
            # rank knows the global batch's pseudo-labels, so the denominator needs no collective.
            global_targets = self.labels_of(batch.unlabeled_index)
            assert global_targets is not None
            row_weight = np.where(global_targets >= 0, self.class_weights[global_targets.clip(0)], 1.0)
            local_weight = torch.from_numpy(self.class_weights).float().to(dev)[targets.clamp_min(0)]
            value = (per_text * local_weight * (targets >= 0)).sum() * env.world_size / float(row_weight.sum())
        return Contribution(terms=[Term("st", value, self.lc.self_training_weight)])

    def state_dict(self) -> dict[str, Any]:
        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a)

        return {"pseudo_labels": tensor(self.pseudo_labels), "pseudo_probs": tensor(self.pseudo_probs),
                "ensemble_probs": tensor(self.ensemble_probs), "teacher_probs": tensor(self.teacher_probs),
                "labeled_at": self.labeled_at, "rows": tensor(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A checkpoint without "rows" scored every text (before loss.self_training_sample).
        for key in ("pseudo_labels", "pseudo_probs", "ensemble_probs", "teacher_probs", "rows"):
            value = state.get(key)
            setattr(self, key, None if value is None else value.numpy())
        self.labeled_at = state.get("labeled_at")
        self._set_kept_rows()


def build(ctx: BuildContext) -> SelfTraining | None:
    lc = ctx.cfg.loss
    if not ctx.uses_unlabeled or lc.self_training_weight <= 0:
        return None
    return SelfTraining(lc, ctx.unlabeled, ctx.hidden_labels, ctx.model, ctx.class_weights, every=ctx.round_steps,
                        seed=ctx.cfg.seed)
