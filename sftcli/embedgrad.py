"""The input embedding's gradient, kept in one buffer and cleared row by row (``trainer.embedding_grad_rows``).

PyTorch's dense embedding backward allocates a zeroed ``[vocab, hidden]`` gradient every step and adds the
batch's rows into it; for MiniLM that is 30522 x 384 floats (47 MB) to clear, and clipping then reads all
of it for the gradient norm, although a batch of 32 questions writes a few hundred rows.

Here the lookup returns a sparse gradient (``nn.Embedding.sparse``), which autograd adds in place into a
dense buffer that lives as long as the run, so the optimizer still sees an ordinary dense gradient. The
rows the step's token ids name are the only ones that can be non-zero: the gradient norm reads those
rows alone, and after the step only they are zeroed again.

Under DDP the reducer averages the gradient over ranks, so rows that other ranks used are non-zero too;
there the norm reads the whole buffer and the whole buffer is cleared.
"""

from __future__ import annotations

import torch


class EmbeddingGradRows:
    """Owns the gradient buffer of one embedding; :meth:`clear` stands in for zero_grad on it."""

    def __init__(self, embedding: torch.nn.Embedding, distributed: bool = False):
        self.weight = embedding.weight
        self.distributed = distributed
        self.buffer = torch.zeros_like(self.weight)
        self.weight.grad = self.buffer
        self.ids: list[torch.Tensor] = []
        embedding.sparse = True
        embedding.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # Only lookups that can produce a gradient; evaluation runs under no_grad.
        if torch.is_grad_enabled() and module.training:
            if self.weight.grad is not self.buffer:
                # zero_grad ran without clear() (the gradient is None now): clear the rows of before and
                # hand the buffer back, or the backward would leave a sparse gradient in its place.
                self.clear()
            self.ids.append(args[0].detach().reshape(-1))

    def rows(self) -> torch.Tensor | None:
        """The rows written since the last clear (None: any row may be non-zero)."""
        if self.distributed:
            return None
        if not self.ids:
            return torch.zeros(0, dtype=torch.long, device=self.buffer.device)
        return torch.unique(torch.cat(self.ids).to(self.buffer.device))

    def norm(self) -> torch.Tensor:
        """The gradient's 2-norm, read from the written rows only where that is exact."""
        rows = self.rows()
        return self.buffer.norm() if rows is None else self.buffer.index_select(0, rows).norm()

    def clear(self) -> None:
        """Zero the written rows and hand the buffer back to the parameter (zero_grad(set_to_none=True)
        detached it; the same storage goes back, so nothing is allocated)."""
        if self.distributed:
            self.buffer.zero_()
        elif self.ids:
            # Repeated ids are harmless here (unlike in the norm), so no torch.unique on this path.
            self.buffer.index_fill_(0, torch.cat(self.ids).to(self.buffer.device), 0.0)
        self.ids.clear()
        self.weight.grad = self.buffer


def embedding_grad_rows_possible(model: torch.nn.Module) -> str | None:
    """Why the row-cleared buffer cannot serve this model's input embedding, or None when it can.

    A weight shared with another module (a tied output layer) gets dense gradients from it, whose rows
    the token ids do not name.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, torch.nn.Embedding):
        return "the input embedding is not an nn.Embedding"
    if emb.max_norm is not None or emb.scale_grad_by_freq:
        return "the input embedding uses max_norm or scale_grad_by_freq"
    if not emb.weight.requires_grad:
        return "the input embedding is frozen"
    uses = sum(1 for _, p in model.named_parameters(remove_duplicate=False) if p is emb.weight)
    if uses > 1:
        return "the input embedding's weight is shared with another layer"
    return None
