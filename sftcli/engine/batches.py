"""The batches of one optimizer step: which streams the strategy draws, this rank's rows, input noise.

Both streams are seeded and positioned (their state goes into checkpoints), so a resumed run draws the
same global batches as the uninterrupted one; each rank takes its slice of every global batch. A mix step
draws unlabeled rows only when a term reads them, and from the subset it names (self-training's kept
texts): a stream of its own over that subset, seeded by the subset's key and checkpointed with the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sftcli import dist, faults
from sftcli.config import TrainConfig
from sftcli.data import (
    BatchStream,
    DataBundle,
    Encoded,
    TokenRows,
    collate,
    mask_tokens,
    pad_concat,
    rank_slice,
)
from sftcli.engine.steps import ALL_UNLABELED, StepBatch, UnlabeledRows
from sftcli.strategy import CONTRASTIVE, MIX, SUPERVISED, step_kind


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device; on CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class StepBatches:
    def __init__(self, cfg: TrainConfig, data: DataBundle, labeled: Encoded, unlabeled: TokenRows | None,
                 tokenizer: Any, pad_id: int, env: dist.DistEnv):
        self.cfg, self.data, self.env = cfg, data, env
        self.labeled, self.unlabeled, self.tokenizer, self.pad_id = labeled, unlabeled, tokenizer, pad_id
        tc, grouping = cfg.trainer, cfg.data.length_grouping
        self.labeled_stream = BatchStream(len(labeled), tc.batch_size, cfg.seed, 0,
                                          labeled.lengths() if grouping else None)
        self.unlabeled_stream = None
        if unlabeled is not None:
            self.unlabeled_stream = BatchStream(len(unlabeled), tc.unlabeled_batch_size, cfg.seed, 1,
                                                unlabeled.lengths() if grouping else None)
        # The stream over a subset of the unlabeled texts, rebuilt when the subset's key changes; a resumed
        # run's saved position waits in _pending_subset until the same subset is asked for again.
        self.subset_key: int | None = None
        self.subset_stream: BatchStream | None = None
        self._pending_subset: dict[str, int] | None = None
        self.tokens = 0  # non-pad tokens of this rank's rows in the last step
        self.samples = 0  # global texts of the last step

    def kind(self, step: int) -> str:
        """sup, con or mix for step `step` (0-based)."""
        return step_kind(self.cfg.strategy, step)

    def next(self, step: int, unlabeled: UnlabeledRows | None = ALL_UNLABELED) -> StepBatch:
        """The inputs of step `step` (0-based steps done so far; the batch records step + 1). `unlabeled`:
        the unlabeled texts the terms read this step (None: none, so a mix step is a labeled step)."""
        kind, dev = self.kind(step), self.env.device
        if kind == MIX and unlabeled is None:
            kind = SUPERVISED
        self.tokens = 0
        lab_inputs = labels = unl_inputs = unl_index = global_labels = index = None
        if kind in (SUPERVISED, MIX):
            index, local = self._draw(self.labeled_stream, "labeled", step)
            lab_inputs = collate(self.labeled, local, self.pad_id)
            labels = to_device(torch.from_numpy(self.data.labeled.labels[local]), dev)
            global_labels = self.data.labeled.labels[index]
            self.tokens += self.labeled.n_tokens(local)
        if kind in (CONTRASTIVE, MIX):
            assert self.unlabeled_stream is not None and self.unlabeled is not None
            unl_index, local = self._draw_unlabeled(unlabeled or ALL_UNLABELED, step)
            unl_inputs = collate(self.unlabeled, local, self.pad_id)
            self.tokens += self.unlabeled.n_tokens(local)
        # One forward over labeled + unlabeled texts (a mix step) instead of two.
        if lab_inputs is not None and unl_inputs is not None:
            inputs = pad_concat(lab_inputs, unl_inputs, self.pad_id)
        else:
            inputs = lab_inputs if lab_inputs is not None else unl_inputs
        assert inputs is not None
        n_lab = 0 if labels is None else len(labels)
        self.samples = (0 if index is None else len(index)) + (0 if unl_index is None else len(unl_index))
        clean = None
        lc = self.cfg.loss
        if unl_inputs is not None:
            clean = {k: v[n_lab:] for k, v in inputs.items()}
            if lc.unlabeled_mask_prob > 0:
                inputs = self._mask_rows(inputs, slice(n_lab, None), lc.unlabeled_mask_prob, step, 0)
        if n_lab and lc.labeled_mask_prob > 0:
            inputs = self._mask_rows(inputs, slice(0, n_lab), lc.labeled_mask_prob, step, 1)
        return StepBatch(step=step + 1, inputs={k: to_device(v, dev) for k, v in inputs.items()}, n_labeled=n_lab,
                         labels=labels, unlabeled_index=unl_index, clean_unlabeled=clean, global_labels=global_labels)

    def _draw_unlabeled(self, rows: UnlabeledRows, step: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.unlabeled_stream is not None and self.unlabeled is not None
        if rows.index is None:
            return self._draw(self.unlabeled_stream, "unlabeled", step)
        if self.subset_key != rows.key or self.subset_stream is None:
            lengths = self.unlabeled.lengths()[rows.index] if self.cfg.data.length_grouping else None
            # Stream ids 0 and 1 are the labeled and whole-unlabeled streams; a subset's id follows its key.
            self.subset_stream = BatchStream(len(rows.index), self.cfg.trainer.unlabeled_batch_size, self.cfg.seed,
                                             2 + rows.key, lengths)
            self.subset_key = rows.key
            pending, self._pending_subset = self._pending_subset, None
            if pending is not None and pending["key"] == rows.key:
                self.subset_stream.load_state_dict(pending)
        return self._draw(self.subset_stream, "unlabeled", step, rows.index)

    def _draw(self, stream: BatchStream, name: str, step: int,
              subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        global_idx = stream.next()
        if subset is not None:
            global_idx = subset[global_idx]  # positions in the subset -> indices into the whole set
        local = rank_slice(global_idx, self.env.rank, self.env.world_size)
        # Test hook (SFT_TEST_RECORD_IDS, see faults.record_batch): rank 0 records every consumed global
        # batch so tests can check that resume neither skips nor repeats an example in either stream.
        if faults.hooks().record_ids is not None and self.env.is_main:
            ids = self.data.labeled.ids if name == "labeled" else self.data.unlabeled.ids
            faults.record_batch(step + 1, name, ids[global_idx])
        return global_idx, local

    def _mask_rows(self, inputs: dict[str, torch.Tensor], rows: slice, prob: float, step: int, salt: int
                   ) -> dict[str, torch.Tensor]:
        """Token masking of some rows (input noise: the unlabeled rows' targets come from the texts as they
        are), drawn from (seed, step, rank, salt) so a resumed run masks exactly as the uninterrupted one
        would; salt 0 the unlabeled rows, 1 the labeled ones, so turning one on leaves the other's draws."""
        tok = self.tokenizer
        mask_id = tok.mask_token_id
        if mask_id is None:
            mask_id = tok.unk_token_id if tok.unk_token_id is not None else self.pad_id
        base = (self.cfg.seed * 1_000_003 + step) * 1024 + self.env.rank
        gen = torch.Generator().manual_seed(base + salt * 2**62)
        ids = inputs["input_ids"].clone()
        ids[rows] = mask_tokens(ids[rows], inputs["attention_mask"][rows], prob, mask_id, tok.all_special_ids, gen)
        return {**inputs, "input_ids": ids}

    def epoch_labeled(self) -> float:
        s = self.labeled_stream
        return s.epoch + s.offset / s.n

    def state_dict(self) -> dict[str, Any]:
        subset = None
        if self.subset_stream is not None and self.subset_key is not None:
            subset = {"key": self.subset_key, **self.subset_stream.state_dict()}
        return {"labeled": self.labeled_stream.state_dict(),
                "unlabeled": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None,
                "unlabeled_subset": subset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled_stream.load_state_dict(state["labeled"])
        if self.unlabeled_stream is not None and state["unlabeled"] is not None:
            self.unlabeled_stream.load_state_dict(state["unlabeled"])
        # Applied when the subset is asked for again (its indices come from the objectives' own state).
        self.subset_key, self.subset_stream = None, None
        self._pending_subset = state.get("unlabeled_subset")

