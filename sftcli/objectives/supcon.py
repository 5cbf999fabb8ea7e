"""Supervised contrastive term on the labeled rows (SupCon, Khosla et al. 2020; train/loss_supcon).

Texts of the same class are positives, the other labeled texts of the global batch negatives, on the
normalised pooled representations (model.pooling) of the training forward. For anchor i with positives
P(i) (same label, not i) among all other texts A(i):

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s(i,p)/tau) / sum_{a in A(i)} exp(s(i,a)/tau) )

averaged over the global batch (an anchor without a positive adds 0); similarities are cosine, in fp32,
against the whole global batch gathered across ranks with gradients, as the seed's term does. Weight: loss.supcon_weight; temperature: loss.supcon_tau.

With loss.supcon_unlabeled=true the unlabeled rows of the step join with self-training's pseudo-labels as
their classes (SetFit's contrastive body training, on every confidently labeled text); rows without a
pseudo-label are left out of the term entirely (neither anchors nor negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sftcli import dist
from sftcli.data import rank_slice
from sftcli.engine.steps import Contribution, StepBatch, StepView, Term
from sftcli.model import pool
from sftcli.objectives.base import BuildContext, Objective

# Masked similarities: a finite value, so a row with no valid column still has a finite log-sum-exp (its
# exp is exactly 0 next to any valid column, as -inf's is).
MASKED = -1e9


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, z_all: torch.Tensor, labels_all: torch.Tensor, tau: float,
                self_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SUM over the local anchors `z` [b, d] of SupCon against all rows `z_all` [N, d] (row self_offset + i
    is anchor i itself), and the number of local anchors with at least one positive. A label < 0 marks a
    row that takes no part (no anchor, no positive, no negative)."""
    z = F.normalize(z.float(), dim=-1)
    z_all = F.normalize(z_all.float(), dim=-1)
    b = z.shape[0]
    rows = torch.arange(b, device=z.device)
    logits = z @ z_all.t() / tau  # [b, N]
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[rows, rows + self_offset] = False
    keys = not_self & (labels_all >= 0)[None, :]
    logits = logits.masked_fill(~keys, MASKED)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels_all[None, :]) & keys
    n_pos = positives.sum(1)
    has = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)) / n_pos.clamp_min(1)
    return (per_anchor * has).sum(), has.sum()


class SupCon(Objective):
    name = "supcon"

    def __init__(self, weight: float, tau: float, pooling: str, with_unlabeled: bool = False):
        self.weight, self.tau, self.pooling = weight, tau, pooling
        # loss.supcon_unlabeled: the unlabeled rows take part with their pseudo-labels (the step's batch
        # carries them, from the objective that keeps them: self-training)
        self.with_unlabeled = with_unlabeled

    def _with_unlabeled(self, batch: StepBatch) -> bool:
        return self.with_unlabeled and batch.pseudo_labels is not None and batch.has_unlabeled

    def wants_hidden_states(self, batch: StepBatch) -> bool:
        return batch.has_labeled or self._with_unlabeled(batch)

    def contribute(self, view: StepView) -> Contribution:
        batch, env = view.batch, view.env
        parts = [batch.labels] if batch.has_labeled else []
        if self._with_unlabeled(batch):
            assert batch.pseudo_labels is not None
            parts.append(torch.from_numpy(rank_slice(batch.pseudo_labels, env.rank, env.world_size)).to(env.device))
        if not parts:
            return Contribution()
        labels = torch.cat(parts)
        n = labels.shape[0]  # the same on every rank: each has its share of both global batches
        z = pool(view.output.hidden_states[-1][:n].float(), batch.inputs["attention_mask"][:n], self.pooling)
        z_all = dist.gather_with_grad(env, z)
        labels_all = dist.gather_with_grad(env, labels)
        total, anchors = supcon_loss(z, labels, z_all, labels_all, self.tau, self_offset=env.rank * n)
        # Mean over the local anchors: every rank has n of them, so DDP's averaging gives the global mean.
        value = total / n
        count = z.new_tensor(float(n))
        return Contribution(terms=[Term("supcon", value, self.weight)],
                            ratios={"supcon_anchor_rate": (anchors.float(), count)})


def build(ctx: BuildContext) -> SupCon | None:
    lc = ctx.cfg.loss
    if lc.supcon_weight <= 0:
        return None
    # With loss.supcon_unlabeled the pile's rows join when a step carries pseudo-labels, which only an
    # objective that keeps them (self-training) provides: without one, the term stays on the labels.
    return SupCon(lc.supcon_weight, lc.supcon_tau, ctx.cfg.model.pooling,
                  with_unlabeled=lc.supcon_unlabeled and ctx.uses_unlabeled)
