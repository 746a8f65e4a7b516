"""Spectra of trajectory tensors and the numbers that summarise how low-rank they are. Pure linear algebra.

A spectrum is given as **singular values** ``s`` (descending); every number is a function of the energies
``λ = s²``: the top-``k`` energy fraction, ``rank_for_energy`` (``select_rank``'s rule), the entropy effective rank
``exp(H(p))`` with ``p = s² / sum(s²)`` (not Roy & Vetterli's ``p = s / sum(s)``) and the participation ratio
``(sum λ)² / sum λ²`` (docs/evaluation.md, ``lori analyze``, has the definitions).

``mode_spectra(x)``: the singular values of every mode-``n`` unfolding (a Tucker / HOSVD of ``x``), computed from
the unfolding's Gram matrix (float64, ``eigvalsh``): exact up to round-off and, unlike the unfolding, additive over
slices of the other modes, so ``mode_gram`` on batches can be summed and handed to ``gram_singular_values`` and a
large tensor never has to be held at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .basis import select_rank

__all__ = [
    "ENERGY_THRESHOLDS",
    "chance_mean_cos2",
    "cumulative_energy",
    "effective_rank_entropy",
    "energy_at_rank",
    "gram_singular_values",
    "mode_gram",
    "mode_spectra",
    "participation_ratio",
    "principal_cosines",
    "rank_for_energy",
    "spectrum_summary",
    "top_subspace",
]

ENERGY_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


def _energies(s: Tensor) -> Tensor:
    s = torch.as_tensor(s).detach().to(torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("empty spectrum")
    if bool((s < 0).any()):
        raise ValueError("singular values must be non-negative")
    return torch.sort(s, descending=True).values ** 2


def cumulative_energy(s: Tensor) -> Tensor:
    """``[k]`` -> the energy fraction of the top ``1..k`` components (float64, last entry 1; all 0 for a zero
    spectrum)."""
    lam = _energies(s)
    total = lam.sum()
    if total <= 0:
        return torch.zeros_like(lam)
    return (lam.cumsum(0) / total).clamp(0.0, 1.0)


def energy_at_rank(s: Tensor, rank: int) -> float:
    """Fraction of the energy ``sum(s²)`` in the top ``rank`` components (0 for a zero spectrum)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    c = cumulative_energy(s)
    return float(c[min(rank, c.numel()) - 1])


def rank_for_energy(s: Tensor, energy: float) -> int:
    """The smallest ``k`` whose top-``k`` components hold at least ``energy`` of ``sum(s²)`` (``select_rank``'s rule,
    with its 1e-9 tolerance, so ``energy=1`` on an exactly rank-``k`` spectrum gives ``k``; a zero spectrum gives 1)."""
    lam = _energies(s)
    if lam.sum() <= 0:  # select_rank would answer the full dimension here
        return 1
    return select_rank(lam[None], None, energy)


def effective_rank_entropy(s: Tensor) -> float:
    """``exp(H(p))``, ``p = s² / sum(s²)`` (natural log; ``0 log 0 = 0``). 0 for a zero spectrum."""
    lam = _energies(s)
    total = lam.sum()
    if total <= 0:
        return 0.0
    p = lam / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def participation_ratio(s: Tensor) -> float:
    """``(sum λ)² / sum λ²`` with ``λ = s²``. 0 for a zero spectrum."""
    lam = _energies(s)
    denom = (lam**2).sum()
    if denom <= 0:
        return 0.0
    return float(lam.sum() ** 2 / denom)


def spectrum_summary(s: Tensor, rank: int | None = None,
                     thresholds: Sequence[float] = ENERGY_THRESHOLDS) -> dict:
    """All the numbers of one spectrum, JSON-ready: ``dim``, ``effective_rank_entropy``, ``participation_ratio``,
    ``rank_for_energy`` (``{"0.8": k, ...}``), ``energy_at_rank`` (with ``rank``; None without), and the curves
    ``singular_values`` (raw), ``normalized_singular_values`` (``s / s[0]``), ``cumulative_energy``."""
    lam = _energies(s)
    sv = lam.sqrt()
    top = float(sv[0])
    return {
        "dim": int(sv.numel()),
        "effective_rank_entropy": effective_rank_entropy(sv),
        "participation_ratio": participation_ratio(sv),
        "rank_for_energy": {f"{t:g}": rank_for_energy(sv, t) for t in thresholds},
        "rank": rank,
        "energy_at_rank": None if rank is None else energy_at_rank(sv, rank),
        "singular_values": sv.tolist(),
        "normalized_singular_values": (sv / top).tolist() if top > 0 else [0.0] * sv.numel(),
        "cumulative_energy": cumulative_energy(sv).tolist(),
    }


# ---------------------------------------------------------------------------------------------------------- modes


def mode_gram(x: Tensor, mode: int, batch_dims: int = 0) -> Tensor:
    """Gram ``X_(n) X_(n)ᵀ`` (float64, ``[x.shape[mode]]²``) of the mode-``mode`` unfolding of ``x``.

    ``mode`` counts from the first non-batch dimension; the leading ``batch_dims`` dimensions (e.g. examples) are
    folded into the columns, like any other mode, so Grams of batches along them add up to the Gram of the whole."""
    if not 0 <= mode < x.dim() - batch_dims:
        raise ValueError(f"mode {mode} out of range for a tensor with {x.dim() - batch_dims} modes")
    xm = x.detach().to(torch.float64).movedim(batch_dims + mode, 0).reshape(x.shape[batch_dims + mode], -1)
    return xm @ xm.T


def gram_singular_values(gram: Tensor) -> Tensor:
    """Singular values of ``X`` from its Gram ``X Xᵀ``: ``sqrt`` of the eigenvalues, descending, clamped at 0."""
    g = gram.to(torch.float64)
    g = 0.5 * (g + g.transpose(-1, -2))
    return torch.linalg.eigvalsh(g).flip(-1).clamp_min(0.0).sqrt()


def mode_spectra(x: Tensor, modes: Sequence[int] | None = None, batch_dims: int = 0) -> list[Tensor]:
    """Singular values of the mode-``n`` unfolding of ``x`` for each ``n`` in ``modes`` (default: every mode),
    via ``mode_gram`` / ``gram_singular_values``."""
    n_modes = x.dim() - batch_dims
    modes = range(n_modes) if modes is None else modes
    return [gram_singular_values(mode_gram(x, m, batch_dims)) for m in modes]


# --------------------------------------------------------------------------------------------------- subspaces


def top_subspace(second_moment: Tensor, rank: int) -> Tensor:
    """Orthonormal ``[..., d, rank]``: the leading eigenvectors of the symmetric ``second_moment [..., d, d]``."""
    m = second_moment.to(torch.float64)
    m = 0.5 * (m + m.transpose(-1, -2))
    _, vecs = torch.linalg.eigh(m)
    return vecs.flip(-1)[..., :rank]


def principal_cosines(U: Tensor, V: Tensor) -> Tensor:
    """Cosines of the principal angles between the column spaces of orthonormal ``U [..., d, r]`` and
    ``V [..., d, r']`` (descending, ``min(r, r')`` of them): the singular values of ``Uᵀ V``. ``mean(cos²)`` over
    ``r = r'`` is ``||UᵀV||_F² / r``; for independent random subspaces it is ``r / d`` on average."""
    c = torch.linalg.svdvals(U.to(torch.float64).transpose(-1, -2) @ V.to(torch.float64))
    return c.clamp(0.0, 1.0)


def chance_mean_cos2(rank: int, dim: int) -> float:
    """Expected ``mean(cos²)`` of the principal angles of two independent uniformly random ``rank``-dim subspaces of
    ``R^dim``: ``rank / dim``."""
    return rank / dim if dim else math.nan
