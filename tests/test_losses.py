"""The contrastive term against a hand computation, and the supervised term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftcli.losses import info_nce, supervised_loss


def hand_infonce(q: torch.Tensor, p: torch.Tensor, tau: float) -> float:
    """Literal DESIGN.md formula, one text at a time, in float64."""
    q = q.double()
    p = p.double()
    total = 0.0
    for i in range(q.shape[0]):
        def s(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.dot(a, b) / (a.norm() * b.norm()))

        pos = math.exp(s(q[i], p[i]) / tau)
        neg = sum(math.exp(s(q[i], q[j]) / tau) for j in range(q.shape[0]) if j != i)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_matches_hand_computation() -> None:
    torch.manual_seed(0)
    q, p = torch.randn(5, 7), torch.randn(5, 7)
    total, stats = info_nce(q, p, q, tau=0.1, self_offset=0)
    assert abs(total.item() / 5 - hand_infonce(q, p, 0.1)) < 1e-5
    assert 0 <= stats["top1"].item() <= 5


def test_a_text_is_never_its_own_negative() -> None:
    # If q_i were among its own negatives, the loss of identical q == p would be log(1 + 1 + ...) > log 2;
    # with one other far-away text the loss must be close to 0.
    q = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    total, _ = info_nce(q, q.clone(), q, tau=0.05, self_offset=0)
    assert total.item() / 2 < 1e-6


def test_positive_is_in_the_denominator() -> None:
    # Two orthogonal texts: the positive (sim 1) and one negative (sim 0) give -log(e^{1/t} / (e^{1/t} + e^0)).
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    total, _ = info_nce(q, q.clone(), q, tau=tau, self_offset=0)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 1.0))
    assert abs(total.item() / 2 - expected) < 1e-6


def test_gradient_does_not_reach_the_frozen_side() -> None:
    q = torch.randn(4, 8, requires_grad=True)
    p = torch.randn(4, 8, requires_grad=True)
    total, _ = info_nce(q, p.detach(), q, tau=0.1, self_offset=0)
    total.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert p.grad is None


def test_similarities_are_fp32_under_low_precision_inputs() -> None:
    torch.manual_seed(1)
    q, p = torch.randn(6, 16), torch.randn(6, 16)
    full, _ = info_nce(q, p, q, tau=0.05, self_offset=0)
    half, _ = info_nce(q.bfloat16(), p.bfloat16(), q.bfloat16(), tau=0.05, self_offset=0)
    assert half.dtype == torch.float32
    assert abs(full.item() - half.item()) / 6 < 0.05


def test_rank_slices_sum_to_the_global_loss() -> None:
    # Two "ranks" each holding half the rows, against the full key set, add up to the one-process loss.
    torch.manual_seed(2)
    q, p = torch.randn(8, 5), torch.randn(8, 5)
    whole, _ = info_nce(q, p, q, tau=0.2, self_offset=0)
    a, _ = info_nce(q[:4], p[:4], q, tau=0.2, self_offset=0)
    b, _ = info_nce(q[4:], p[4:], q, tau=0.2, self_offset=4)
    assert torch.allclose(whole, a + b, atol=1e-6)


def test_supervised_loss_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    assert torch.allclose(supervised_loss(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_is_the_cross_entropy_of_the_smoothed_targets(weighted) -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, -0.5, 3.0]])
    labels = torch.tensor([0, 2, 2])
    eps, classes = 0.3, 3
    target = F.one_hot(labels, classes) * (1 - eps) + eps / classes
    weight = torch.tensor([0.5, 2.0, 3.0]) if weighted else torch.ones(classes)
    # Each row's loss against its smoothed target, each class's term weighted, over the rows' label weights.
    per_row = -(target * weight * F.log_softmax(logits, dim=-1)).sum(-1)
    expected = per_row.sum() / weight[labels].sum()
    got = (supervised_loss(logits, labels, weight, float(weight[labels].sum()), smoothing=eps) if weighted
           else supervised_loss(logits, labels, smoothing=eps))
    torch.testing.assert_close(got, expected)
    assert float(got) > float(supervised_loss(logits, labels, *((weight, float(weight[labels].sum())) if weighted
                                                                 else ())))


def test_excluded_negatives_leave_the_denominator() -> None:
    torch.manual_seed(3)
    q, p = torch.randn(4, 6), torch.randn(4, 6)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 1] = True  # text 1 is not a negative of text 0
    masked, _ = info_nce(q, p, q, tau=0.1, self_offset=0, exclude=exclude)
    qn, pn = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    expected = 0.0
    for i in range(4):
        pos = (qn[i] @ pn[i]) / 0.1
        negs = [(qn[i] @ qn[j]) / 0.1 for j in range(4) if j != i and not (i == 0 and j == 1)]
        expected += float(torch.logsumexp(torch.stack([pos, *negs]), 0) - pos)
    assert abs(masked.item() - expected) < 1e-5


def test_no_negatives_is_a_stay_close_term() -> None:
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    total, _ = info_nce(q, p, None, tau=0.5, self_offset=0)
    assert abs(total.item() - (0.0 + (1 - 2**-0.5) / 0.5)) < 1e-6


def test_consistency_uses_only_confident_pseudo_labels() -> None:
    from sftcli.losses import consistency_loss

    weak = torch.tensor([[5.0, 0.0], [0.1, 0.0]])  # row 0 confident (class 0), row 1 not
    strong = torch.tensor([[0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    total, confident = consistency_loss(strong, weak, threshold=0.9)
    assert confident.item() == 1.0
    assert abs(total.item() - F.cross_entropy(strong[:1].detach(), torch.tensor([0])).item()) < 1e-6
    total.backward()
    assert strong.grad[1].abs().sum() == 0


def test_mask_tokens_masks_only_real_non_special_tokens_at_the_given_rate() -> None:
    from sftcli.data import mask_tokens

    cls, sep, pad, mask = 101, 102, 0, 103
    body = torch.randint(1000, 2000, (64, 30))
    ids = torch.cat([torch.full((64, 1), cls), body, torch.full((64, 1), sep), torch.full((64, 8), pad)], dim=1)
    attn = (ids != pad).long()
    out = mask_tokens(ids, attn, 0.25, mask, [cls, sep, pad], torch.Generator().manual_seed(0))
    changed = out != ids
    assert not changed[:, 0].any() and not changed[:, 31].any() and not changed[:, 32:].any()
    assert (out[changed] == mask).all()
    rate = changed[:, 1:31].float().mean().item()
    assert 0.2 < rate < 0.3  # 1920 draws at p=0.25: a 5-sigma band is about +-0.05
    again = mask_tokens(ids, attn, 0.25, mask, [cls, sep, pad], torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the same generator state masks the same tokens (exact resume)
    assert torch.equal(mask_tokens(ids, attn, 0.0, mask, [cls, sep, pad], torch.Generator()), ids)


def test_self_training_keeps_the_most_confident_share_of_every_predicted_class() -> None:
    import numpy as np

    from sftcli.losses import select_pseudo_labels, softmax

    # Class 0 predicted for rows 0-3 (confidence rising with the margin), class 1 for rows 4-5.
    logits = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 0.5], [0.0, 5.0]])
    labels, conf = select_pseudo_labels(softmax(logits), top=0.5)
    # ceil(0.5 * 4) = 2 of class 0 (margins 4 and 3: rows 3 and 1), ceil(0.5 * 2) = 1 of class 1 (row 5).
    assert labels.tolist() == [-1, 0, -1, 0, -1, 1]
    assert np.isclose(conf[5], 1 / (1 + np.exp(-5.0)))
    everything, _ = select_pseudo_labels(softmax(logits), top=1.0)
    assert everything.tolist() == [0, 0, 0, 0, 1, 1]


def test_global_self_training_keeps_the_most_confident_share_of_all_texts() -> None:
    import numpy as np

    from sftcli.losses import select_pseudo_labels, softmax

    # Same logits: global top half = the 3 largest margins overall, rows 5 (5.0), 3 (4.0), 1 (3.0),
    # whatever their class.
    logits = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 0.5], [0.0, 5.0]])
    labels, _ = select_pseudo_labels(softmax(logits), top=0.5, per_class=False)
    assert labels.tolist() == [-1, 0, -1, 0, -1, 1]
    # Top third: globally the 2 most confident texts; per class, class 0 (4 texts) also keeps row 1
    # (margin 3.0) to fill its share, although row 1 is less sure than anything kept globally.
    labels, _ = select_pseudo_labels(softmax(logits), top=1 / 3, per_class=False)
    assert labels.tolist() == [-1, -1, -1, 0, -1, 1]
    per_class, _ = select_pseudo_labels(softmax(logits), top=1 / 3)
    assert per_class.tolist() == [-1, 0, -1, 0, -1, 1]


def test_the_projection_head_starts_as_the_identity_and_then_learns() -> None:
    from sftcli.model import ResidualProjection

    torch.manual_seed(0)
    head = ResidualProjection(8)
    h = torch.randn(4, 8)
    assert torch.equal(head(h), h)
    loss = (head(h) - torch.randn(4, 8)).pow(2).sum()
    loss.backward()
    assert head.down.weight.grad.abs().sum() > 0  # the zero layer gets a gradient, so the head can move
