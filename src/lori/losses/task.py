"""Task loss: token cross-entropy with an explicit, global normaliser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "answer_token_ce", "token_cross_entropy"]

IGNORE_INDEX = -100  # label of an unsupervised position: each rendering writes it (lori.data.render), the loss skips it


def token_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    num_tokens: int | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Sum of token cross-entropies over supervised positions divided by ``num_tokens``.

    Args:
        logits: ``[B, T, V]`` (any float dtype; the supervised rows are upcast to float32).
        labels: ``[B, T]`` int, **already aligned**: ``labels[b, t]`` is the target for ``logits[b, t]`` (the caller
            does the next-token shift). ``ignore_index`` (-100) = not supervised.
        num_tokens: the normaliser — the *global* number of supervised tokens of the optimisation step (over all
            micro-batches / processes), so that summing micro-batch losses (and gradients) gives exactly the full-batch
            loss. None: the local count (plain mean). A local batch with no supervised token gives 0.

    Returns: float32 scalar.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    sel = labels != ignore_index
    rows = logits[sel]  # [N, V], only supervised positions are upcast
    dt = torch.promote_types(logits.dtype, torch.float32)
    total = F.cross_entropy(rows.to(dt), labels[sel].long(), reduction="sum")
    if num_tokens is None:
        denom = sel.sum().clamp_min(1).to(dt)
    else:
        if isinstance(num_tokens, int) and num_tokens <= 0:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        denom = torch.as_tensor(num_tokens, device=total.device).to(dt)
    return total / denom


@torch.no_grad()
def answer_token_ce(
    logits: Tensor,
    labels: Tensor,
    answer_len: int,
    num_examples: int,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Cross-entropy of each answer token, summed over the examples and divided by ``num_examples`` (a diagnostic:
    where a student fails, e.g. the middle digits of a product; no gradient).

    ``logits``/``labels`` are aligned as in :func:`token_cross_entropy`, and every row ends its supervised positions
    with ``answer <eos>``, ``answer`` being ``answer_len`` tokens (the ``####`` marker before them is not counted):
    answer token j (0-based) is the supervised position with ``answer_len + 1 - j`` supervised positions at or after
    it. A row with fewer supervised positions contributes to the tokens it has. Returns float32 ``[answer_len]``.
    """
    sel = labels != ignore_index
    after = sel.flip(1).long().cumsum(1).flip(1)  # supervised positions at or after t
    pick = sel & (after >= 2) & (after <= answer_len + 1)
    rows = logits[pick].float()
    ce = F.cross_entropy(rows, labels[pick].long(), reduction="none")
    which = answer_len + 1 - after[pick]
    out = torch.zeros(answer_len, dtype=torch.float32, device=logits.device)
    return out.index_add_(0, which, ce) / num_examples
