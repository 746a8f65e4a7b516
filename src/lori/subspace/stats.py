"""Length-independent trajectory statistics in the subspace, and the packed upper-triangle storage of covariances.

Shapes: ``B`` batch, ``L`` layers, ``T`` positions, ``r`` rank.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["masked_moments", "triu_pack", "triu_unpack", "triu_size", "triu_rank"]


def masked_moments(z: Tensor, mask: Tensor | None = None, centred: bool = True) -> tuple[Tensor, Tensor]:
    """Mean and covariance over the valid positions of each trajectory.

    Args:
        z: ``[B, L, T, r]`` projected hidden states (any float dtype; computed in at least float32).
        mask: ``[B, T]`` bool, True = valid position (None: all valid). Masked positions cannot influence the result
            or its gradient, whatever they hold (inf/NaN included): they are removed with ``torch.where``, never by
            multiplication.
        centred: True: population covariance ``C = (1/n) sum_t (z_t - mu)(z_t - mu)^T`` (a single valid position
            gives ``C = 0``). False: uncentred second moment ``C = (1/n) sum_t z_t z_t^T``.

    Returns:
        ``mu [B, L, r]``, ``C [B, L, r, r]`` (float32, or float64 for float64 input). A row with no valid position
        (``n = 0``) gets ``mu = 0`` and ``C = 0`` (and zero gradient).

    Both are invariant to trajectory length in the sense that repeating every position ``k`` times leaves them
    unchanged — this is what lets a ``T``-token rationale be compared with ``K`` latent steps.
    """
    if z.dim() != 4:
        raise ValueError(f"z must be [B, L, T, r], got shape {tuple(z.shape)}")
    B, L, T, r = z.shape
    dt = torch.promote_types(z.dtype, torch.float32)
    z = z.to(dt)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=z.device)
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    m = mask.to(z.device)[:, None, :, None]  # [B, 1, T, 1]
    zero = z.new_zeros(())
    zc = torch.where(m, z, zero)  # padding -> exact 0, no inf/NaN survives
    n = mask.to(z.device).sum(-1).to(dt)  # [B]
    inv_n = torch.where(n > 0, 1.0 / n.clamp_min(1.0), torch.zeros_like(n))[:, None, None]  # [B, 1, 1]
    mu = zc.sum(2) * inv_n  # [B, L, r]
    if centred:
        dev = torch.where(m, zc - mu[:, :, None, :], zero)
    else:
        dev = zc
    C = torch.einsum("bltr,blts->blrs", dev, dev) * inv_n[..., None]
    return mu, C


def triu_size(r: int) -> int:
    """Number of entries in the upper triangle (with diagonal) of an ``r x r`` matrix: ``r(r+1)/2``."""
    return r * (r + 1) // 2


def triu_rank(m: int) -> int:
    """Inverse of ``triu_size``; raises ``ValueError`` if ``m`` is not a triangular number."""
    r = int(round((math.sqrt(8 * m + 1) - 1) / 2))
    if triu_size(r) != m:
        raise ValueError(f"{m} is not r(r+1)/2 for any integer r")
    return r


def triu_pack(C: Tensor) -> Tensor:
    """``C [..., r, r]`` -> ``[..., r(r+1)/2]``: the upper triangle with diagonal, row-major
    (order of ``torch.triu_indices(r, r)``). Only the upper triangle is read (``C`` is assumed symmetric)."""
    if C.dim() < 2 or C.shape[-1] != C.shape[-2]:
        raise ValueError(f"C must be [..., r, r], got {tuple(C.shape)}")
    r = C.shape[-1]
    i, j = torch.triu_indices(r, r, device=C.device)
    return C[..., i, j]


def triu_unpack(p: Tensor, r: int | None = None) -> Tensor:
    """``p [..., r(r+1)/2]`` -> symmetric ``[..., r, r]`` (inverse of ``triu_pack``; differentiable)."""
    m = p.shape[-1]
    if r is None:
        r = triu_rank(m)
    elif triu_size(r) != m:
        raise ValueError(f"last dim {m} != r(r+1)/2 = {triu_size(r)} for r={r}")
    i, j = torch.triu_indices(r, r, device=p.device)
    index = torch.empty(r, r, dtype=torch.long, device=p.device)
    k = torch.arange(m, device=p.device)
    index[i, j] = k
    index[j, i] = k
    return p[..., index.reshape(-1)].reshape(*p.shape[:-1], r, r)
