"""Which texts to label next (`sft select`): the query strategies, on arrays only.

Every strategy ranks the candidates of a pool (texts not yet labeled) and takes them in that order,
skipping any text whose embedding is a near duplicate (cosine >= `near`) of a labeled text or of a text
already taken: a batch spent on one text five times teaches the model once.

- ``margin``: BreakingTies (Scheffer et al. 2001; small-text's strongest single strategy): the smallest gap
  between the two likeliest labels first.
- ``entropy``: the highest entropy of the predicted distribution first.
- ``random``: a seeded shuffle (the baseline every strategy must beat).
- ``diverse``: the pool's embeddings in n clusters (k-means), and from each cluster its most uncertain text
  (smallest margin), clusters with the most uncertain texts first; so the batch covers the pool instead of
  spending itself on one region of near-identical uncertain texts. Without a model (cold start) each
  cluster gives the text nearest its centre: n texts that stand for the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("diverse", "margin", "entropy", "random")


@dataclass(frozen=True)
class Choice:
    """A proposed text: its position in the pool, its score (higher = chosen sooner) and why."""

    index: int
    score: float
    reason: str


def margins(probs: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2) per row: 1 where the two likeliest labels tie, 0 where one label has it all."""
    top = np.sort(probs, axis=1)[:, ::-1]
    second = top[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    return 1.0 - (top[:, 0] - second)


def entropies(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


class _Taken:
    """The texts taken so far, and the near-duplicate test against them and the labeled texts."""

    def __init__(self, vectors: np.ndarray, labeled: np.ndarray | None, near: float) -> None:
        self.vectors, self.near = vectors, near
        self.blocked = labeled if labeled is not None and len(labeled) else np.empty((0, vectors.shape[1]),
                                                                                       dtype=vectors.dtype)
        self.chosen: list[Choice] = []
        self.indices: set[int] = set()
        self.skipped = 0

    def offer(self, index: int, score: float, reason: str) -> bool:
        """Take the text at `index` unless it is taken already or a near duplicate; True if taken."""
        if index in self.indices:
            return False
        v = self.vectors[index]
        if len(self.blocked) and float((self.blocked @ v).max()) >= self.near:
            self.skipped += 1
            return False
        self.blocked = np.vstack([self.blocked, v[None]])
        self.chosen.append(Choice(int(index), float(score), reason))
        self.indices.add(int(index))
        return True


def choose(strategy: str, n: int, vectors: np.ndarray, probs: np.ndarray | None, label_names: list[str] | None,
           labeled: np.ndarray | None, near: float, seed: int) -> tuple[list[Choice], int]:
    """(up to n choices in the order taken, how many texts were passed over as near duplicates).

    `vectors`: the candidates' embeddings, unit length; `probs`: the model's class probabilities (None: cold
    start); `labeled`: the labeled texts' embeddings (never proposed again, nor a near copy of one)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    taken = _Taken(vectors, labeled, near)
    if len(vectors) == 0 or n <= 0:
        return [], 0
    rng = np.random.default_rng(seed)

    def describe(i: int) -> str:
        if probs is None or label_names is None:
            return ""
        first, second = np.argsort(-probs[i], kind="stable")[:2] if probs.shape[1] > 1 else (0, 0)
        return f"{label_names[first]} {probs[i, first]:.2f} vs {label_names[second]} {probs[i, second]:.2f}"

    def take_ranked(order: np.ndarray, score: np.ndarray, what: str) -> None:
        for i in order:
            if len(taken.chosen) >= n:
                return
            taken.offer(int(i), float(score[i]), f"{what} {score[i]:.3f} ({describe(int(i))})".replace(" ()", ""))

    if strategy == "random":
        order = rng.permutation(len(vectors))
        for rank, i in enumerate(order):
            if len(taken.chosen) >= n:
                break
            taken.offer(int(i), float(len(order) - rank), "drawn at random")
        return taken.chosen, taken.skipped
    if strategy in ("margin", "entropy"):
        assert probs is not None, f"strategy={strategy} needs a model's probabilities"
        score = margins(probs) if strategy == "margin" else entropies(probs)
        take_ranked(np.argsort(-score, kind="stable"), score, "uncertainty (1 - margin)" if strategy == "margin"
                    else "entropy")
        return taken.chosen, taken.skipped
    _diverse(taken, n, vectors, probs, describe, seed)
    if len(taken.chosen) < n and probs is not None:
        # Clusters whose every text was a near duplicate: the rest by margin alone.
        score = margins(probs)
        take_ranked(np.argsort(-score, kind="stable"), score, "uncertainty (1 - margin)")
    return taken.chosen, taken.skipped


def _diverse(taken: _Taken, n: int, vectors: np.ndarray, probs: np.ndarray | None, describe, seed: int) -> None:
    """Each of n k-means clusters gives one text: its most uncertain (a model), or the one nearest its centre."""
    from sklearn.cluster import KMeans

    k = min(n, len(vectors))
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(vectors.astype(np.float64))
    assign, centres = km.labels_, km.cluster_centers_
    sizes = np.bincount(assign, minlength=k)
    if probs is not None:
        score = margins(probs)
        what = "uncertainty (1 - margin)"
    else:
        # Nearest the centre first: the text that stands for its cluster.
        score = -np.linalg.norm(vectors - centres[assign], axis=1)
        what = "nearest the centre"
    ranked = {c: np.flatnonzero(assign == c)[np.argsort(-score[assign == c], kind="stable")] for c in range(k)}
    # Clusters in order of their best text's score (the most uncertain region first), ties by size.
    clusters = sorted(range(k), key=lambda c: (-score[ranked[c][0]], -sizes[c], c))
    for c in clusters:
        if len(taken.chosen) >= n:
            return
        for i in ranked[c]:
            extra = describe(int(i))
            value = f" {score[i]:.3f}" if probs is not None else ""
            reason = f"{what}{value} in cluster {c + 1} of {k} ({sizes[c]} texts)" + (f"; {extra}" if extra else "")
            if taken.offer(int(i), float(score[i]), reason):
                break


def normalise_text(text: str) -> str:
    """A text as compared for exact duplicates: case, surrounding and repeated whitespace ignored."""
    return " ".join(text.split()).casefold()


def prediction_change(before: dict[str, str], after: dict[str, str]) -> tuple[int, int, float | None]:
    """(texts both rounds predicted, of them changed, Cohen's kappa between the rounds or None): small-text's
    stopping signal (KappaAverage: stop once the agreement stays near 1)."""
    shared = sorted(before.keys() & after.keys())
    if not shared:
        return 0, 0, None
    a, b = [before[k] for k in shared], [after[k] for k in shared]
    changed = sum(x != y for x, y in zip(a, b, strict=True))
    from sklearn.metrics import cohen_kappa_score

    kappa = float(cohen_kappa_score(a, b)) if len(set(a) | set(b)) > 1 else 1.0
    return len(shared), changed, kappa
