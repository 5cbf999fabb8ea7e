"""The batches of one optimizer step: which streams the strategy draws, this rank's rows, input noise.

Both streams are seeded and positioned (their state goes into checkpoints), so a resumed run draws the
same global batches as the uninterrupted one; each rank takes its slice of every global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sftcli import dist, faults
from sftcli.config import TrainConfig
from sftcli.data import BatchStream, DataBundle, Encoded, collate, mask_tokens, pad_concat, rank_slice
from sftcli.objectives.base import StepBatch
from sftcli.strategy import CONTRASTIVE, MIX, SUPERVISED, step_kind


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device; on CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class StepBatches:
    def __init__(self, cfg: TrainConfig, data: DataBundle, labeled: Encoded, unlabeled: Encoded | None,
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
        self.tokens = 0  # non-pad tokens of this rank's rows in the last step

    def kind(self, step: int) -> str:
        """sup, con or mix for step `step` (0-based)."""
        return step_kind(self.cfg.strategy, step)

    def samples(self, kind: str) -> int:
        """Global texts of a step of this kind."""
        tc = self.cfg.trainer
        return (tc.batch_size if kind in (SUPERVISED, MIX) else 0) + \
            (tc.unlabeled_batch_size if kind in (CONTRASTIVE, MIX) else 0)

    def next(self, step: int) -> StepBatch:
        """The inputs of step `step` (0-based steps done so far; the batch records step + 1)."""
        kind, dev = self.kind(step), self.env.device
        self.tokens = 0
        lab_inputs = labels = unl_inputs = unl_index = global_labels = None
        if kind in (SUPERVISED, MIX):
            index, local = self._draw(self.labeled_stream, "labeled", step)
            lab_inputs = collate(self.labeled, local, self.pad_id)
            labels = to_device(torch.from_numpy(self.data.labeled.labels[local]), dev)
            global_labels = self.data.labeled.labels[index]
            self.tokens += _tokens(self.labeled, local)
        if kind in (CONTRASTIVE, MIX):
            assert self.unlabeled_stream is not None and self.unlabeled is not None
            unl_index, local = self._draw(self.unlabeled_stream, "unlabeled", step)
            unl_inputs = collate(self.unlabeled, local, self.pad_id)
            self.tokens += _tokens(self.unlabeled, local)
        # One forward over labeled + unlabeled texts (a mix step) instead of two.
        if lab_inputs is not None and unl_inputs is not None:
            inputs = pad_concat(lab_inputs, unl_inputs, self.pad_id)
        else:
            inputs = lab_inputs if lab_inputs is not None else unl_inputs
        assert inputs is not None
        n_lab = 0 if labels is None else len(labels)
        clean = None
        if unl_inputs is not None:
            clean = {k: v[n_lab:] for k, v in inputs.items()}
            if self.cfg.loss.unlabeled_mask_prob > 0:
                inputs = self._mask_unlabeled(inputs, n_lab, step)
        return StepBatch(step=step + 1, inputs={k: to_device(v, dev) for k, v in inputs.items()}, n_labeled=n_lab,
                         labels=labels, unlabeled_index=unl_index, clean_unlabeled=clean, global_labels=global_labels)

    def _draw(self, stream: BatchStream, name: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        global_idx = stream.next()
        local = rank_slice(global_idx, self.env.rank, self.env.world_size)
        # Test hook (SFT_TEST_RECORD_IDS, see faults.record_batch): rank 0 records every consumed global
        # batch so tests can check that resume neither skips nor repeats an example in either stream.
        if faults.hooks().record_ids is not None and self.env.is_main:
            ids = self.data.labeled.ids if name == "labeled" else self.data.unlabeled.ids
            faults.record_batch(step + 1, name, ids[global_idx])
        return global_idx, local

    def _mask_unlabeled(self, inputs: dict[str, torch.Tensor], n_lab: int, step: int) -> dict[str, torch.Tensor]:
        """Token masking of the unlabeled rows (input noise for every unlabeled term: the targets come from
        the texts as they are), drawn from (seed, step, rank) so a resumed run masks exactly as the
        uninterrupted one would."""
        tok = self.tokenizer
        mask_id = tok.mask_token_id
        if mask_id is None:
            mask_id = tok.unk_token_id if tok.unk_token_id is not None else self.pad_id
        gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 1024 + self.env.rank)
        ids = inputs["input_ids"]
        masked = mask_tokens(ids[n_lab:], inputs["attention_mask"][n_lab:], self.cfg.loss.unlabeled_mask_prob,
                             mask_id, tok.all_special_ids, gen)
        return {**inputs, "input_ids": torch.cat([ids[:n_lab], masked])}

    def epoch_labeled(self) -> float:
        s = self.labeled_stream
        return s.epoch + s.offset / s.n

    def state_dict(self) -> dict[str, Any]:
        return {"labeled": self.labeled_stream.state_dict(),
                "unlabeled": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled_stream.load_state_dict(state["labeled"])
        if self.unlabeled_stream is not None and state["unlabeled"] is not None:
            self.unlabeled_stream.load_state_dict(state["unlabeled"])


def _tokens(enc: Encoded, index: np.ndarray) -> int:
    # Reads only this batch's offsets: lengths() of the whole set would cost O(corpus) every step.
    return int((enc.offsets[index + 1] - enc.offsets[index]).sum())
