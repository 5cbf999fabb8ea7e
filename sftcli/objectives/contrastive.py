"""L_con, the seed's term: InfoNCE that keeps each unlabeled text's fine-tuned representation close to
the frozen pretrained representation of the same text, against the other texts as negatives.

For text x: query q = f(x) (pooled last hidden states of the model being trained, optionally through a
projection head), positive p = f0(x) (the frozen pretrained encoder; computed once and cached on disk,
or by a live frozen copy with loss.teacher_cache=false), negatives: the other texts' q gathered across
ranks (or their p with loss.negatives=pretrained, or none). Weight: lambda (ramped up over
loss.rampup_steps when set).

With loss.positive=dropout the positive is SimCSE's instead (Gao et al. 2021): the same text through the
model being trained under a second dropout draw, without gradient (a stop-gradient target), so no
frozen encoder is kept unless the negatives need it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli import dist, faults, timing
from sftcli.config import LossConfig
from sftcli.data import NpyRows, TokenRows, collate, rank_slice
from sftcli.engine.steps import ALL_UNLABELED, Contribution, StepBatch, StepView, Term, UnlabeledRows
from sftcli.evaluate import autocast
from sftcli.losses import info_nce
from sftcli.model import ResidualProjection, pool, weights_fingerprint
from sftcli.objectives.base import BuildContext, Objective
from sftcli.teacher import teacher_representations

# Name prefix of the projection head's parameters among the trained ones (optimizer groups).
PROJECTION = "contrastive_projection"


class Contrastive(Objective):
    name = "con"

    def __init__(self, lc: LossConfig, pooling: str, model: torch.nn.Module, unlabeled: TokenRows, pad_id: int,
                 env: dist.DistEnv, cache: Path, key_parts: tuple[str, ...], eval_batch_size: int, seed: int):
        self.lc, self.pooling, self.env, self.pad_id, self.unlabeled = lc, pooling, env, pad_id, unlabeled
        self.teacher: torch.nn.Module | None = None
        self.teacher_reps: NpyRows | None = None
        if lc.positive == "pretrained" or lc.negatives == "pretrained":
            self._build_teacher(model, cache, key_parts, eval_batch_size)
        # The projection head: trained with the model, saved in the training state (it is not part of the
        # classifier, so exported models do not carry it).
        self.projection: torch.nn.Module | None = None
        self.ddp_projection: torch.nn.Module | None = None
        self.initial_projection: dict[str, torch.Tensor] | None = None
        if lc.projection == "mlp":
            with torch.random.fork_rng(devices=[]):  # its own init draws; the run's RNG stream is unchanged
                torch.manual_seed(seed)
                self.projection = ResidualProjection(model.config.hidden_size)
            self.initial_projection = {k: v.detach().clone() for k, v in self.projection.state_dict().items()}

    def _build_teacher(self, model: torch.nn.Module, cache: Path, key_parts: tuple[str, ...],
                       eval_batch_size: int) -> None:
        # The frozen pretrained encoder: a copy of the initial weights, eval mode, never updated.
        teacher = copy.deepcopy(model.base_model).eval().requires_grad_(False)
        if self.lc.teacher_cache:
            with timing.phase("teacher_cache"):
                self.teacher_reps = teacher_representations(
                    teacher, self.unlabeled, self.pooling, self.pad_id, cache,
                    key_parts=(weights_fingerprint(teacher), *key_parts), env=self.env,
                    batch_size=eval_batch_size, precision="fp32")
        else:
            self.teacher = teacher.to(self.env.device)

    def weight(self, step: int) -> float:
        """lambda of step `step` (1-based), ramped up linearly over loss.rampup_steps when set."""
        assert self.lc.weight is not None
        if self.lc.rampup_steps:
            return self.lc.weight * min(1.0, step / self.lc.rampup_steps)
        return self.lc.weight

    def unlabeled_rows(self) -> UnlabeledRows:
        return ALL_UNLABELED

    def wants_hidden_states(self, batch: StepBatch) -> bool:
        return batch.has_unlabeled

    def contribute(self, view: StepView) -> Contribution:
        batch = view.batch
        if not batch.has_unlabeled:
            return Contribution()
        n_lab = batch.n_labeled
        hidden = view.output.hidden_states[-1][n_lab:]
        rows = {k: v[n_lab:] for k, v in batch.inputs.items()}
        second = self._dropout_view(rows, view) if self.lc.positive == "dropout" else None
        con, ratios = self._info_nce(hidden, rows["attention_mask"], batch.unlabeled_index,
                                     view.unlabeled_predictions(), second)
        con = faults.poison("con", con, batch.step)
        return Contribution(terms=[Term("con", con, self.weight(batch.step))], ratios=ratios)

    @torch.no_grad()
    def _dropout_view(self, rows: dict[str, torch.Tensor], view: StepView) -> torch.Tensor:
        """SimCSE's positive: the pooled states of the same rows through the model in training mode, so
        under a second dropout draw (the run's RNG: exact resume draws it again), without gradient."""
        with autocast(self.env.device, view.precision):
            out = view.model.base_model(**rows)
        return pool(out.last_hidden_state.float(), rows["attention_mask"], self.pooling)

    def _frozen(self, local_idx: np.ndarray, global_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen encoder's representations of the local rows, and of the global batch when the
        negatives are pretrained."""
        env, dev = self.env, self.env.device
        if self.teacher_reps is not None:
            p = torch.from_numpy(np.asarray(self.teacher_reps[local_idx])).to(dev)
            p_global = None
            if self.lc.negatives == "pretrained":
                p_global = torch.from_numpy(np.asarray(self.teacher_reps[global_idx])).to(dev)
            return p, p_global
        assert self.teacher is not None
        rows = {k: v.to(dev) for k, v in collate(self.unlabeled, local_idx, self.pad_id).items()}
        with torch.no_grad():
            p = pool(self.teacher(**rows).last_hidden_state.float(), rows["attention_mask"], self.pooling)
        return p, dist.gather_with_grad(env, p) if self.lc.negatives == "pretrained" else None

    def _info_nce(self, hidden: torch.Tensor, mask: torch.Tensor, global_idx: np.ndarray, preds: torch.Tensor,
                  second: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        env, dev = self.env, self.env.device
        b = hidden.shape[0]
        local_idx = rank_slice(global_idx, env.rank, env.world_size)
        pooled = pool(hidden.float(), mask, self.pooling)
        q = pooled if self.ddp_projection is None else self.ddp_projection(pooled)
        frozen, p_global = (None, None) if self.teacher is None and self.teacher_reps is None else \
            self._frozen(local_idx, global_idx)
        p = second if second is not None else frozen
        assert p is not None
        keys = p_global if p_global is not None else dist.gather_with_grad(env, q)
        # Negatives the classifier puts in the query's class: a diagnostic, and optionally masked out.
        all_preds = dist.gather_with_grad(env, preds)
        same = preds[:, None] == all_preds[None, :]
        rows_b = torch.arange(b, device=dev)
        same[rows_b, rows_b + env.rank * b] = False
        n_keys = all_preds.shape[0]
        if self.lc.negatives == "none":
            keys = None
        exclude = same if self.lc.mask_same_class else None
        total, stats = info_nce(q, p, keys, self.lc.tau, self_offset=env.rank * b, exclude=exclude)
        # Sum over local rows / global batch size, times world size: DDP's gradient averaging then
        # yields exactly the single-process gradient of the global mean.
        con = total * env.world_size / len(global_idx)
        count = torch.tensor(float(b), device=dev)
        ratios = {"con_pos_sim": (stats["pos_sim"], count), "con_top1": (stats["top1"], count),
                  "con_neg_sim": (stats["neg_sim"], count),
                  "con_same_class_neg": (same.float().sum() / max(n_keys - 1, 1), count)}
        if frozen is not None:
            with torch.no_grad():
                # Drift of what the encoder itself produces (before any projection head) from the frozen one.
                drift = (1.0 - torch.nn.functional.cosine_similarity(pooled.detach(), frozen, dim=-1)).sum()
            ratios["con_drift"] = (drift, count)
        return con, ratios

    def window_values(self, step: int) -> dict[str, float]:
        return {"train/lambda": self.weight(step)}  # the window's last step, just taken

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.projection is None:
            return []
        return [(f"{PROJECTION}.{n}", p) for n, p in self.projection.named_parameters()]

    def to_train(self) -> None:
        if self.projection is not None:
            self.projection.to(self.env.device)
            self.ddp_projection = dist.wrap_model(self.env, self.projection)

    def reset(self) -> None:
        if self.projection is not None:
            assert self.initial_projection is not None
            self.projection.load_state_dict(self.initial_projection)

    def state_dict(self) -> dict[str, Any]:
        return {"projection": None if self.projection is None else self.projection.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.projection is not None:
            if state.get("projection") is None:
                from sftcli.errors import CheckpointError

                raise CheckpointError("loss.projection=mlp, but the checkpoint has no projection head")
            self.projection.load_state_dict(state["projection"])


def build(ctx: BuildContext) -> Contrastive | None:
    cfg = ctx.cfg
    if not ctx.uses_unlabeled or not cfg.loss.weight:
        return None
    return Contrastive(cfg.loss, cfg.model.pooling, ctx.model, ctx.unlabeled, ctx.pad_id, ctx.env, ctx.cache,
                       ctx.teacher_key, cfg.trainer.eval_batch_size, cfg.seed)
