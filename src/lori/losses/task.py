"""Task loss: token cross-entropy with an explicit, global normaliser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "token_cross_entropy"]

IGNORE_INDEX = -100


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
