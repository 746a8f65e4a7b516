"""LoRi's statistics of a trajectory in the shared subspace: per-layer mean, covariance and anchor of the projected
hidden states (``trajectory_statistics``), per-prefix means (``prefix_means``) and per-step hand-over states
(``step_states``). The same functions compute the teacher's statistics in ``lori precompute`` and the student's at
every LoRi training step, so cached and on-the-fly statistics agree by construction.

Shapes: ``B`` batch, ``L`` layers, ``T`` positions, ``d`` width, ``r`` rank, ``S`` steps.
"""

from __future__ import annotations

import torch

from .basis import Basis
from .stats import masked_moments


def trajectory_statistics(basis: Basis, h: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor, centred: bool):
    """LoRi statistics of trajectories in the subspace.

    Args:
        h: ``[B, L, T, d]`` hidden states at the reasoning positions (teacher rationale or student latent steps).
        mask: ``[B, T]`` bool, valid positions.
        anchor: ``[B, L, d]`` hidden states at the answer anchor.
    Returns:
        ``mu [B, L', r]``, ``C [B, L', r, r]``, ``a [B, L', r]`` where ``L' = L`` or the layer-factor rank.
    """
    z = basis.project(h)  # [B, L, T, r]
    a = basis.project_anchor(anchor)  # [B, L, r]
    if basis.V is not None:
        z = basis.project_layers(z)
        a = basis.project_layers(a[:, :, None, :])[:, :, 0, :]
    mu, C = masked_moments(z, mask, centred=centred)
    return mu, C, a


def prefix_means(basis: Basis, h: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Per-prefix first-order statistics: the mean of the projected states over the first k rationale steps.

    Args:
        h: ``[B, L, T, d]`` hidden states at the rationale positions.
        ends: ``[B, S]`` long, the end (exclusive) of step s+1 in rationale positions; 0 = no such step.
    Returns:
        ``[B, S, L', r]``: row ``k-1`` is the mean over positions ``0 .. ends[:, k-1] - 1`` (0 where there is no
        step k). What a curriculum stage that has turned the first k steps into thoughts is compared with
        (``lori.prefix_statistics``).
    """
    z = basis.project(h)
    if basis.V is not None:
        z = basis.project_layers(z)
    z = z.float()
    csum = z.cumsum(2)  # [B, L, T, r]
    idx = (ends - 1).clamp(min=0)  # [B, S]
    g = torch.gather(csum, 2, idx[:, None, :, None].expand(-1, csum.shape[1], -1, csum.shape[-1]))  # [B, L, S, r]
    means = g / ends.clamp(min=1)[:, None, :, None].to(g.dtype)
    means = torch.where((ends > 0)[:, None, :, None], means, torch.zeros_like(means))
    return means.transpose(1, 2).contiguous()


def step_states(basis: Basis, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Projected states at one position per step: ``h [B, L, T, d]``, ``positions [B, S]`` long (clamped into the
    trajectory) -> ``[B, S, L', r]``. The teacher's hand-over states (``Rendered.handovers``) for lori.step_anchors."""
    idx = positions.clamp(0, h.shape[2] - 1)
    g = torch.gather(h, 2, idx[:, None, :, None].expand(-1, h.shape[1], -1, h.shape[-1]))  # [B, L, S, d]
    z = basis.project(g)
    if basis.V is not None:
        z = basis.project_layers(z)
    return z.float().transpose(1, 2).contiguous()
