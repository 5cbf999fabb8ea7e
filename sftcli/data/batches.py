"""Batches: seeded streams of example indices, each rank's share, padded tensors, masked tokens.

Batches are drawn by :class:`BatchStream`, whose whole state is (epoch, offset): that is what makes
resume exact and lets every process count see the same global batches.
"""

from __future__ import annotations

import numpy as np
import torch

from sftcli.data.tokens import TokenRows
from sftcli.errors import DataError


class BatchStream:
    """An endless, seeded stream of global batches over `n` examples.

    The stream is the concatenation of per-epoch permutations drawn from (seed, stream id, epoch); a
    global batch is its next `batch_size` elements (crossing epochs when needed, so nothing is dropped).
    The whole state is (epoch, offset), so resume is exact and independent of the process count.
    With `lengths`, each epoch groups examples of similar length into batches (then shuffles batches).
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream_id: int, lengths: np.ndarray | None = None):
        if n < 1:
            raise DataError("a batch stream needs at least one example")
        self.n, self.batch_size, self.seed, self.stream_id = n, batch_size, seed, stream_id
        self.lengths = lengths
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.stream_id, epoch])
            perm = rng.permutation(self.n)
            if self.lengths is not None:
                # The first examples of epoch e complete the last batch of epoch e - 1.
                head = (-epoch * self.n) % self.batch_size
                perm = _group_by_length(perm, self.lengths, self.batch_size, rng, head)
            self._perm_epoch, self._perm = epoch, perm
        return self._perm

    def next(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need:
            perm = self._permutation(self.epoch)
            take = perm[self.offset : self.offset + need]
            out.append(take)
            need -= len(take)
            self.offset += len(take)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return np.concatenate(out)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n:
            raise DataError(f"resume: the stream had {state['n']} examples, now {self.n} (data changed)")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def _group_by_length(perm: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     head: int = 0) -> np.ndarray:
    # Sort within windows of 50 batches so batches hold similar lengths (less padding) while the
    # epoch stays shuffled; then shuffle the batch order. The first `head` examples complete the
    # previous epoch's last batch and the one short batch goes last, so every full batch lines up with
    # the stream's batch boundaries: a short batch in the middle would shift each later batch across
    # two length groups (TREC-6 at batch 32: 16% padding instead of 1-4%).
    first, rest = perm[:head], perm[head:]
    window = batch_size * 50
    chunks = [np.zeros(0, dtype=perm.dtype)]
    for start in range(0, len(rest), window):
        part = rest[start : start + window]
        chunks.append(part[np.argsort(lengths[part], kind="stable")])
    ordered = np.concatenate(chunks)
    n_full = len(ordered) // batch_size * batch_size
    batches = [ordered[i : i + batch_size] for i in range(0, n_full, batch_size)]
    order = rng.permutation(len(batches))
    return np.concatenate([first, *(batches[i] for i in order), ordered[n_full:]])


def rank_slice(global_batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (sizes are checked divisible by the world size)."""
    per = len(global_batch) // world
    return global_batch[rank * per : (rank + 1) * per]


def collate(enc: TokenRows, index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the examples `index` to the longest of them (dynamic padding)."""
    seqs = enc.sequences(index)
    width = max((len(s[0]) for s in seqs), default=1)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64) if enc.has_type_ids else None
    for row, (ids, tt) in enumerate(seqs):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
        if types is not None and tt is not None:
            types[row, : len(tt)] = tt
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def pad_concat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two padded batches into one (padding the narrower), for one forward over both."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    out = {}
    for key in a.keys() | b.keys():
        fill = pad_id if key == "input_ids" else 0
        parts = []
        for batch in (a, b):
            t = batch.get(key)
            if t is None:
                t = torch.zeros_like(batch["input_ids"])
            if t.shape[1] < width:
                t = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
            parts.append(t)
        out[key] = torch.cat(parts)
    return out


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, prob: float, mask_id: int,
                keep_ids: list[int], generator: torch.Generator) -> torch.Tensor:
    """A copy of `input_ids` with each real, non-special token replaced by `mask_id` with probability
    `prob` (the strongly perturbed view of a consistency term). Pad and special tokens ([CLS], [SEP])
    are never masked, so the sequence keeps its frame."""
    draw = torch.rand(input_ids.shape, generator=generator) < prob
    maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(keep_ids, dtype=input_ids.dtype))
    return input_ids.masked_fill(draw & maskable, mask_id)
