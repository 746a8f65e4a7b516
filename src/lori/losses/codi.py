"""CODI's distillation term (Shen et al. 2025, arXiv 2502.21074, eq. for L_KD): a pure function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hidden_distance"]


def hidden_distance(student: Tensor, teacher: Tensor, num_examples: int | Tensor | None = None,
                    kind: str = "smooth_l1", eps: float = 1e-6) -> Tensor:
    """Distance between the student's and the teacher's hidden states at one token, over all layers::

        L_KD = 1/N  sum_b  1/L sum_l  mean_d rho(h_S[b,l,d] - sg(h_T[b,l,d])) / std_d(sg(h_T[b,l]))

    with ``rho`` the smooth-L1 (beta 1; CODI's released code) or the absolute value (``kind="l1"``; the paper).

    Args:
        student: ``[B, L, d]`` student hidden states (L = every layer CODI uses: embeddings + each block).
        teacher: ``[B, L, d]`` teacher hidden states at the same token; detached here (no gradient reaches it).
        num_examples: ``N``, the global number of examples of the optimisation step (None: B, a plain mean), so
            micro-batch sums add up to the full-batch loss.
        kind: ``"smooth_l1"`` or ``"l1"``.

    Returns: float32 scalar; 0 when ``student == teacher``.

    (choice) CODI divides each layer's term by the std of the teacher states over the whole micro-batch (all B x d
    numbers). We divide by the std over the hidden dimension of each example's own teacher state: nearly the same
    number (the spread across dimensions dominates the spread of per-example means), and it makes the loss
    independent of how a step is split into micro-batches and processes.
    """
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher must both be [B, L, d]; got {tuple(student.shape)}, "
                         f"{tuple(teacher.shape)}")
    s = student.float()
    t = teacher.detach().float()
    if kind == "smooth_l1":
        rho = F.smooth_l1_loss(s, t, reduction="none", beta=1.0)
    elif kind == "l1":
        rho = (s - t).abs()
    else:
        raise ValueError(f"unknown distance {kind!r}; choose smooth_l1 or l1")
    per = rho.mean(-1) / t.std(-1).clamp_min(eps)  # [B, L]
    total = per.mean(-1).sum()
    denom = student.shape[0] if num_examples is None else num_examples
    return total / torch.as_tensor(denom, device=total.device, dtype=total.dtype)
