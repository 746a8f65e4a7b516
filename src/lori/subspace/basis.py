"""The shared low-rank subspace: streaming second moments, per-layer (or shared) hidden-mode bases, layer factor.

Pure linear algebra (torch, float64 accumulation), no model code, no file formats (``Basis.to_dict`` is a flat
``{name: Tensor}`` dict). Fitting is two streaming passes over a calibration set, never holding all trajectories:

1. ``SecondMomentAccumulator.update(h, mask)`` per batch, then ``fit_bases`` — the factor ``U_l`` (``d x r``) per
   layer (or one shared) from the eigendecomposition of the *uncentred* second moment ``(1/n) sum_t h_t h_t^T``.
2. Optional: ``LayerGramAccumulator(basis).update(h, mask)`` per batch, then ``fit_layer_factor`` — the layer-mode
   factor ``V`` (``L x r_l``) of a truncated HOSVD.

Shapes: ``B`` batch, ``L`` selected layers, ``T`` positions, ``d`` hidden size, ``r`` rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lori.errors import LoriError

__all__ = [
    "Basis",
    "LayerGramAccumulator",
    "SecondMomentAccumulator",
    "fit_bases",
    "fit_layer_factor",
    "select_rank",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _check_batch(h: Tensor, mask: Tensor | None, n_layers: int, dim: int) -> Tensor:
    """Validate ``h [B, L, T, d]`` / ``mask [B, T]`` bool and return the mask on ``h``'s device (None: all valid)."""
    if h.dim() != 4:
        raise ValueError(f"h must be [B, L, T, d], got shape {tuple(h.shape)}")
    B, L, T, d = h.shape
    if L != n_layers or d != dim:
        raise ValueError(f"h has L={L}, d={d}; the accumulator expects L={n_layers}, d={dim}")
    if mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=h.device)
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    return mask.to(h.device)


def _layer_positions(h: Tensor, mask: Tensor, layer: int) -> Tensor:
    """The valid positions of one layer as float64 ``[n, d]``. Selection is by boolean indexing, so whatever sits
    in padding (inf, NaN, garbage) never enters any arithmetic; one layer at a time bounds the float64 copy."""
    return h.detach()[:, layer][mask].to(torch.float64)


def _fix_signs(vecs: Tensor) -> Tensor:
    """Sign convention for eigenvectors (columns of ``vecs [..., d, k]``): the component of largest absolute value
    is made positive (ties: the first such index). Makes fits deterministic up to eigenvalue degeneracy."""
    idx = vecs.abs().argmax(dim=-2, keepdim=True)  # [..., 1, k]
    signs = torch.sign(torch.gather(vecs, -2, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vecs * signs


def _eigh_desc(m: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of symmetric ``m [..., d, d]`` (float64) with eigenvalues in descending order,
    clamped at 0 (the matrices are PSD; tiny negative values are round-off), and fixed eigenvector signs."""
    m = 0.5 * (m + m.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(m)
    evals = evals.flip(-1).clamp_min(0.0)
    evecs = _fix_signs(evecs.flip(-1))
    return evals, evecs


def select_rank(eigenvalues: Tensor, rank: int | None, energy: float | None) -> int:
    """The common rank for all rows of ``eigenvalues [..., d]`` (each sorted descending, non-negative).

    * ``energy`` None: ``rank`` (must be given).
    * ``energy`` given: per row, the smallest ``k`` with ``sum(top k) >= energy * sum(all)``; the common rank is the
      **max over rows** (layers), so every layer reaches the threshold and all share one ``r``. If ``rank`` is also
      given it is a **cap**: ``r = min(r_energy, rank)`` (so some layers may then stay below the threshold; see
      ``Basis.energy_captured``). A row with zero trace asks for rank 1.
    """
    d = eigenvalues.shape[-1]
    if rank is None and energy is None:
        raise ValueError("give a rank, an energy threshold, or both")
    if rank is not None and not (1 <= int(rank) <= d):
        raise ValueError(f"rank must be in [1, {d}], got {rank}")
    if energy is None:
        return int(rank)
    if not (0.0 < float(energy) <= 1.0):
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    ev = eigenvalues.reshape(-1, d).to(torch.float64)
    total = ev.sum(-1, keepdim=True)
    frac = ev.cumsum(-1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    # Relative tolerance so that e.g. energy=1.0 on an exactly rank-r0 spectrum selects r0, not d.
    reached = frac >= (float(energy) - 1e-9)
    reached[:, -1] = True
    reached[total[:, 0] <= 0, 0] = True  # no energy at all: nothing to capture, rank 1
    per_row = reached.to(torch.int64).argmax(-1) + 1  # first True
    r = int(per_row.max())
    if rank is not None:
        r = min(r, int(rank))
    return r


# ----------------------------------------------------------------------------------------------------------------
# pass 1: second moments


class SecondMomentAccumulator:
    """Streaming per-layer second moments ``S_l = sum_t h_t h_t^T`` (``d x d``, float64) over valid positions.

    Also keeps the first moments ``sum_t h_t`` (``[L, d]``, for diagnostics / a centred variant) and the number of
    valid positions per layer (``count [L]``, int64; equal across layers since the mask is per position).

    ``update`` computes the batch contribution on ``h``'s device and adds it to the running sums, which live on
    ``device`` (default CPU). ``merge`` adds another accumulator (e.g. after gathering from other processes);
    equivalently all-reduce (sum) every tensor of ``state_dict()`` and ``load_state_dict`` the result.
    """

    def __init__(self, n_layers: int, dim: int, device: torch.device | str | None = None):
        if n_layers < 1 or dim < 1:
            raise ValueError(f"n_layers and dim must be >= 1, got {n_layers}, {dim}")
        self.n_layers, self.dim = int(n_layers), int(dim)
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.second_moment = torch.zeros(self.n_layers, self.dim, self.dim, dtype=torch.float64, device=dev)
        self.first_moment = torch.zeros(self.n_layers, self.dim, dtype=torch.float64, device=dev)
        self.count = torch.zeros(self.n_layers, dtype=torch.int64, device=dev)

    @torch.no_grad()
    def update(self, h: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch. ``h [B, L, T, d]`` (any float dtype), ``mask [B, T]`` bool: True = valid rationale position.
        Masked positions never count and never enter the arithmetic (NaN/inf there are harmless)."""
        mask = _check_batch(h, mask, self.n_layers, self.dim)
        dev = self.second_moment.device
        for layer in range(self.n_layers):
            x = _layer_positions(h, mask, layer)  # [n, d] float64
            self.second_moment[layer] += (x.T @ x).to(dev)
            self.first_moment[layer] += x.sum(0).to(dev)
        self.count += int(mask.sum())

    def merge(self, other: "SecondMomentAccumulator") -> "SecondMomentAccumulator":
        """Add ``other``'s sums into this one (in place); returns ``self``."""
        if (other.n_layers, other.dim) != (self.n_layers, self.dim):
            raise ValueError(f"cannot merge L={other.n_layers}, d={other.dim} into L={self.n_layers}, d={self.dim}")
        dev = self.second_moment.device
        self.second_moment += other.second_moment.to(dev)
        self.first_moment += other.first_moment.to(dev)
        self.count += other.count.to(dev)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "second_moment": self.second_moment.clone(),
            "first_moment": self.first_moment.clone(),
            "count": self.count.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, shape in (
            ("second_moment", (self.n_layers, self.dim, self.dim)),
            ("first_moment", (self.n_layers, self.dim)),
            ("count", (self.n_layers,)),
        ):
            if name not in state:
                raise ValueError(f"state_dict lacks {name!r}")
            if tuple(state[name].shape) != shape:
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(state[name].shape)}, expected {shape}")
        dev = self.second_moment.device
        self.second_moment = state["second_moment"].to(device=dev, dtype=torch.float64).clone()
        self.first_moment = state["first_moment"].to(device=dev, dtype=torch.float64).clone()
        self.count = state["count"].to(device=dev, dtype=torch.int64).clone()

    def mean_second_moment(self) -> Tensor:
        """``M_l = S_l / n_l`` (``[L, d, d]`` float64). Raises ``LoriError`` if a layer has no positions."""
        if bool((self.count == 0).any()):
            raise LoriError("no valid positions were accumulated: cannot fit a subspace (is the rationale mask empty?)")
        return self.second_moment / self.count.to(torch.float64)[:, None, None]


# ----------------------------------------------------------------------------------------------------------------
# the basis


@dataclass
class Basis:
    """The fitted subspace.

    * ``U [L, d, r]`` float32: orthonormal columns per layer (identical across layers when ``shared``).
    * ``eigenvalues [L, d]`` float64, descending: spectrum of the mean uncentred second moment ``M_l`` per layer;
      when ``shared``, the spectrum of the pooled ``sum_l S_l / sum_l n_l`` repeated on every row.
    * ``energy_captured [L]`` float64: ``tr(U_l^T M_l U_l) / tr(M_l)``, the fraction of layer ``l``'s second-moment
      trace inside its ``r`` components (for a shared basis, of each layer's own trace).
    * ``shared``: one basis for all layers.
    * ``V [L, r_l]`` float32 or None: layer-mode factor (``fit_layer_factor``), ``layer_eigenvalues [L]`` float64
      its spectrum (descending).
    """

    U: Tensor
    eigenvalues: Tensor
    energy_captured: Tensor
    shared: bool = False
    V: Tensor | None = None
    layer_eigenvalues: Tensor | None = None

    @property
    def n_layers(self) -> int:
        return int(self.U.shape[0])

    @property
    def dim(self) -> int:
        return int(self.U.shape[1])

    @property
    def rank(self) -> int:
        return int(self.U.shape[2])

    @property
    def layer_rank(self) -> int | None:
        return None if self.V is None else int(self.V.shape[1])

    def project(self, h: Tensor) -> Tensor:
        """``h [..., L, T, d]`` -> ``z [..., L, T, r]`` with ``z[..., l, t, :] = U_l^T h[..., l, t, :]``.

        Computed in (at least) float32; differentiable w.r.t. ``h`` (``U`` is a constant)."""
        if h.dim() < 3 or h.shape[-3] != self.n_layers or h.shape[-1] != self.dim:
            raise ValueError(f"h must be [..., L={self.n_layers}, T, d={self.dim}], got {tuple(h.shape)}")
        dt = torch.promote_types(h.dtype, torch.float32)
        U = self.U.to(device=h.device, dtype=dt)
        return torch.einsum("...ltd,ldr->...ltr", h.to(dt), U)

    def project_anchor(self, h: Tensor) -> Tensor:
        """Single positions: ``h [..., L, d]`` -> ``[..., L, r]`` (e.g. the answer anchor)."""
        if h.dim() < 2 or h.shape[-2] != self.n_layers or h.shape[-1] != self.dim:
            raise ValueError(f"h must be [..., L={self.n_layers}, d={self.dim}], got {tuple(h.shape)}")
        return self.project(h.unsqueeze(-2)).squeeze(-2)

    def project_layers(self, z: Tensor) -> Tensor:
        """Layer mode: ``z [..., L, T, r]`` -> ``[..., r_l, T, r]`` with ``V^T`` along the layer axis."""
        if self.V is None:
            raise ValueError("this basis has no layer factor (fit_layer_factor was not run)")
        if z.dim() < 3 or z.shape[-3] != self.n_layers:
            raise ValueError(f"z must be [..., L={self.n_layers}, T, r], got {tuple(z.shape)}")
        dt = torch.promote_types(z.dtype, torch.float32)
        V = self.V.to(device=z.device, dtype=dt)
        return torch.einsum("...ltr,lk->...ktr", z.to(dt), V)

    def to_dict(self) -> dict[str, Tensor]:
        """Flat dict of contiguous tensors (safetensors-ready). ``shared`` is stored as an int64 ``[1]`` tensor."""
        out = {
            "U": self.U.detach().contiguous().clone(),
            "eigenvalues": self.eigenvalues.detach().contiguous().clone(),
            "energy_captured": self.energy_captured.detach().contiguous().clone(),
            "shared": torch.tensor([int(self.shared)], dtype=torch.int64),
        }
        if self.V is not None:
            out["V"] = self.V.detach().contiguous().clone()
        if self.layer_eigenvalues is not None:
            out["layer_eigenvalues"] = self.layer_eigenvalues.detach().contiguous().clone()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> "Basis":
        for key in ("U", "eigenvalues", "energy_captured", "shared"):
            if key not in d:
                raise ValueError(f"basis dict lacks {key!r}")
        U = d["U"]
        if U.dim() != 3:
            raise ValueError(f"U must be [L, d, r], got {tuple(U.shape)}")
        L, dim, _ = U.shape
        if tuple(d["eigenvalues"].shape) != (L, dim) or tuple(d["energy_captured"].shape) != (L,):
            raise ValueError("eigenvalues / energy_captured do not match U's shape")
        V = d.get("V")
        if V is not None and (V.dim() != 2 or V.shape[0] != L):
            raise ValueError(f"V must be [L={L}, r_l], got {tuple(V.shape)}")
        return cls(
            U=U.to(torch.float32),
            eigenvalues=d["eigenvalues"].to(torch.float64),
            energy_captured=d["energy_captured"].to(torch.float64),
            shared=bool(int(d["shared"].reshape(-1)[0])),
            V=None if V is None else V.to(torch.float32),
            layer_eigenvalues=None if d.get("layer_eigenvalues") is None else d["layer_eigenvalues"].to(torch.float64),
        )


def fit_bases(
    acc: SecondMomentAccumulator,
    rank: int | None = 16,
    energy: float | None = None,
    shared: bool = False,
) -> Basis:
    """Fit the hidden-mode factor(s) from accumulated second moments.

    Per layer (default): eigendecomposition (``torch.linalg.eigh``, float64) of ``M_l = S_l / n_l`` — uncentred, so
    the mean direction is part of the subspace. ``shared=True``: of the pooled ``sum_l S_l / sum_l n_l`` (each layer
    weighs by its energy), one ``U`` for all layers.

    Rank (see ``select_rank``): fixed ``rank``; or, with ``energy``, the smallest rank reaching that fraction of the
    spectrum, taken as the max over layers so that all layers share one ``r``; ``rank`` then caps it.
    Eigenvector signs: the largest-|component| of each column is positive (deterministic).
    """
    M = acc.mean_second_moment()  # [L, d, d] float64
    L, d = acc.n_layers, acc.dim
    if shared:
        pooled = acc.second_moment.sum(0) / acc.count.sum().to(torch.float64)
        ev, vecs = _eigh_desc(pooled)  # [d], [d, d]
        r = select_rank(ev[None], rank, energy)
        U64 = vecs[:, :r].unsqueeze(0).expand(L, d, r).contiguous()
        evals = ev.unsqueeze(0).expand(L, d).contiguous()
    else:
        evals, vecs = _eigh_desc(M)  # [L, d], [L, d, d]
        r = select_rank(evals, rank, energy)
        U64 = vecs[:, :, :r].contiguous()
    captured = torch.einsum("ldr,lde,ler->l", U64, M, U64)
    trace = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)
    energy_captured = torch.where(trace > 0, captured / trace.clamp_min(torch.finfo(torch.float64).tiny),
                                  torch.zeros_like(trace))
    return Basis(
        U=U64.to(torch.float32).cpu(),
        eigenvalues=evals.cpu(),
        energy_captured=energy_captured.clamp(0.0, 1.0).cpu(),
        shared=bool(shared),
    )


# ----------------------------------------------------------------------------------------------------------------
# pass 2 (optional): layer-mode factor


class LayerGramAccumulator:
    """Streaming ``L x L`` Gram matrix of the projected trajectories along the layer mode (for an HOSVD layer factor).

    For every valid position ``t`` with projections ``z_l = U_l^T h_l`` it adds
    ``G[l, m] += <U_l z_l, U_m z_m> = z_l^T (U_l^T U_m) z_m`` — the inner product of the rank-``r`` reconstructions
    in the hidden space, so the Gram is meaningful for per-layer bases (whose coordinates are not comparable across
    layers) and reduces to ``<z_l, z_m>`` for a shared basis. ``G`` is then the Gram of the mode-L unfolding of the
    (hidden-mode-truncated) trajectory tensor summed over examples, whose leading eigenvectors are the HOSVD
    layer factor ``V``. Needs the fitted ``U``, hence a second pass over the calibration data.
    """

    def __init__(self, basis: Basis, device: torch.device | str | None = None):
        self.n_layers, self.dim, self.rank = basis.n_layers, basis.dim, basis.rank
        dev = torch.device("cpu") if device is None else torch.device(device)
        self._U = basis.U.to(torch.float64)
        self._P = torch.einsum("ldr,mds->lmrs", self._U, self._U)  # [L, L, r, r]
        self.gram = torch.zeros(self.n_layers, self.n_layers, dtype=torch.float64, device=dev)
        self.count = torch.zeros((), dtype=torch.int64, device=dev)

    @torch.no_grad()
    def update(self, h: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch: ``h [B, L, T, d]``, ``mask [B, T]`` bool (True = valid)."""
        mask = _check_batch(h, mask, self.n_layers, self.dim)
        U = self._U.to(h.device)
        z = torch.stack([_layer_positions(h, mask, layer) @ U[layer] for layer in range(self.n_layers)])  # [L, n, r]
        cross = torch.einsum("lnr,mns->lmrs", z, z)
        self.gram += (cross * self._P.to(h.device)).sum((-1, -2)).to(self.gram.device)
        self.count += int(mask.sum())

    def merge(self, other: "LayerGramAccumulator") -> "LayerGramAccumulator":
        if other.gram.shape != self.gram.shape:
            raise ValueError("cannot merge layer Gram accumulators of different L")
        self.gram += other.gram.to(self.gram.device)
        self.count += other.count.to(self.count.device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        return {"gram": self.gram.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if tuple(state["gram"].shape) != tuple(self.gram.shape):
            raise ValueError(
                f"state_dict['gram'] has shape {tuple(state['gram'].shape)}, expected {tuple(self.gram.shape)}"
            )
        self.gram = state["gram"].to(device=self.gram.device, dtype=torch.float64).clone()
        self.count = state["count"].to(device=self.count.device, dtype=torch.int64).reshape(()).clone()


def fit_layer_factor(
    basis: Basis,
    acc: LayerGramAccumulator,
    rank: int | None = None,
    energy: float | None = 0.9,
) -> Basis:
    """A copy of ``basis`` with the layer-mode factor ``V [L, r_l]`` (leading eigenvectors of the accumulated Gram,
    same sign convention) and ``layer_eigenvalues [L]``. Rank rule as ``select_rank`` (default: 90% energy)."""
    if (acc.n_layers, acc.dim, acc.rank) != (basis.n_layers, basis.dim, basis.rank):
        raise ValueError("the layer Gram accumulator was built for another basis")
    if int(acc.count) == 0:
        raise LoriError("no valid positions were accumulated: cannot fit a layer factor")
    G = acc.gram / float(acc.count)
    ev, vecs = _eigh_desc(G)
    r_l = select_rank(ev[None], rank, energy)
    return replace(basis, V=vecs[:, :r_l].to(torch.float32).cpu().contiguous(), layer_eigenvalues=ev.cpu())

