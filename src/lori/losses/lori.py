"""LoRi distillation losses: rationale-level statistics matching and the answer anchor. Pure functions, fp32.

Shapes: ``B`` batch, ``L`` layers, ``r`` rank. Teacher tensors (``*_t``) are constants: they are detached inside,
so no gradient ever reaches them. Student tensors (``*_s``) carry the gradient.

Normalisation **(choice)**, with ``normalize=True``: per layer, the mean term is divided by the teacher's projected
energy ``e_l`` (``mean_b ||mu_T||^2 + tr C_T`` centred, ``mean_b tr C_T`` uncentred), the covariance term by
``e_l^2`` and the anchor term by ``mean_b ||a_T||^2``, so that layers weigh alike and the loss is invariant to a
joint rescaling of teacher and student states. The scale is a detached constant; it depends on the batch unless a
fixed ``scale`` is passed (``teacher_energy`` over the whole cache, as training does). Why this one: docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["anchor_loss", "combine", "rationale_loss", "standardized_loss", "teacher_energy"]

_F32 = torch.float32


def _f32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, _F32))


def _layer_weights(layer_weights: Tensor | Sequence[float] | None, L: int, like: Tensor) -> Tensor:
    """Default uniform ``1/L``; given weights are used as they are (not renormalised)."""
    if layer_weights is None:
        return torch.full((L,), 1.0 / L, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(layer_weights, dtype=like.dtype, device=like.device).detach()
    if w.shape != (L,):
        raise ValueError(f"layer_weights must have shape ({L},), got {tuple(w.shape)}")
    return w


def _example_mask(example_mask: Tensor | None, B: int, device: torch.device) -> Tensor:
    if example_mask is None:
        return torch.ones(B, dtype=torch.bool, device=device)
    if example_mask.shape != (B,) or example_mask.dtype != torch.bool:
        raise ValueError(f"example_mask must be a bool tensor of shape ({B},), got {example_mask.dtype} "
                         f"{tuple(example_mask.shape)}")
    return example_mask.to(device)


def _student_teacher(s: Tensor, t: Tensor, names: str, example_mask, layer_weights):
    """Check two ``[B, L, r]`` tensors; return them in fp32 (the teacher detached, on the student's device), the
    example mask and the layer weights."""
    if s.dim() != 3 or s.shape != t.shape:
        raise ValueError(f"{names} must both be [B, L, r], got {tuple(s.shape)} and {tuple(t.shape)}")
    s = _f32(s)
    t = _f32(t.detach()).to(s.device)
    return s, t, _example_mask(example_mask, s.shape[0], s.device), _layer_weights(layer_weights, s.shape[1], s)


def _batch_reduce(per_example: Tensor, valid: Tensor, num_examples: int | Tensor | None) -> Tensor:
    """``sum_b valid_b * x_b / denom`` with ``torch.where`` (invalid rows cannot leak NaN); ``denom`` = ``num_examples``
    or the local number of valid examples (0 valid -> 0)."""
    total = torch.where(valid, per_example, per_example.new_zeros(())).sum()
    if num_examples is None:
        denom = valid.sum().clamp_min(1).to(per_example.dtype)
    else:
        if isinstance(num_examples, int) and num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        denom = torch.as_tensor(num_examples, dtype=per_example.dtype, device=per_example.device)
    return total / denom


def _masked_layer_mean(x: Tensor, valid: Tensor) -> Tensor:
    """``x [B, L]`` -> ``[L]`` mean over valid rows (0 if none)."""
    s = torch.where(valid[:, None], x, x.new_zeros(())).sum(0)
    return s / valid.sum().clamp_min(1).to(x.dtype)


def teacher_energy(mu_t: Tensor, C_t: Tensor, centred: bool = True, example_mask: Tensor | None = None) -> Tensor:
    """Per-layer teacher energy ``e_l`` (``[L]``, float32) used by ``rationale_loss(normalize=True)``:
    ``mean_b (||mu_T||^2 + tr C_T)`` for centred ``C``, ``mean_b tr C_T`` for uncentred (see module docstring).
    ``mu_t [B, L, r]``, ``C_t [B, L, r, r]``; ``example_mask [B]`` bool selects the examples averaged."""
    mu_t, C_t = _f32(mu_t.detach()), _f32(C_t.detach())
    valid = _example_mask(example_mask, mu_t.shape[0], mu_t.device)
    per = torch.diagonal(C_t, dim1=-2, dim2=-1).sum(-1)  # [B, L]
    if centred:
        per = per + mu_t.pow(2).sum(-1)
    return _masked_layer_mean(per, valid)


def rationale_loss(
    mu_s: Tensor,
    C_s: Tensor,
    mu_t: Tensor,
    C_t: Tensor,
    layer_weights: Tensor | Sequence[float] | None = None,
    lam: float = 1.0,
    first_order: bool = True,
    second_order: bool = True,
    normalize: bool = True,
    eps: float = 1e-6,
    *,
    centred: bool = True,
    example_mask: Tensor | None = None,
    num_examples: int | Tensor | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Rationale-level loss ``mean_b sum_l w_l ( ||mu_S - mu_T||^2 / s_l + lam ||C_S - C_T||_F^2 / s_l^2 )``.

    Args:
        mu_s, mu_t: ``[B, L, r]`` student / teacher means (``masked_moments``).
        C_s, C_t: ``[B, L, r, r]`` student / teacher covariances, full symmetric matrices (unpack a cached teacher
            triangle with ``triu_unpack`` first). ``||.||_F`` counts each off-diagonal entry twice. May be None
            when ``second_order=False`` (then ``normalize`` needs ``scale``).
        layer_weights: ``[L]``; default uniform ``1/L``; given weights are not renormalised.
        lam: weight of the second-order (covariance) term.
        first_order, second_order: switch the two terms (ablations); a switched-off term is exactly 0. At least one
            must be on (to drop the whole loss use ``combine(use_rationale=False)``).
        normalize: divide by the teacher's per-layer energy ``s_l = e_l + eps`` (and ``s_l^2`` for the covariance
            term) — see the module docstring **(choice)**. False: ``s_l = 1``.
        centred: whether ``C`` is the centred covariance (True) or the uncentred second moment; only used to compute
            ``e_l``.
        example_mask: ``[B]`` bool, False = example left out (e.g. no rationale positions); default all in.
        num_examples: denominator of the batch mean (global number of examples under gradient accumulation /
            multi-process); default the local number of valid examples.
        scale: ``[L]`` fixed ``e_l`` to use instead of the batch estimate (``eps`` is still added).

    Returns:
        ``(loss, parts)``: ``loss`` a float32 scalar; ``parts = {"mean": ..., "cov": ...}`` detached scalars, the
        batch-reduced, weighted, normalised terms with ``loss == parts["mean"] + lam * parts["cov"]``.
    """
    if not (first_order or second_order):
        raise ValueError("rationale_loss: both first_order and second_order are off; use combine(use_rationale=False)")
    if mu_s.dim() != 3 or mu_s.shape != mu_t.shape:
        raise ValueError(f"mu_s / mu_t must both be [B, L, r], got {tuple(mu_s.shape)} and {tuple(mu_t.shape)}")
    B, L, r = mu_s.shape
    if second_order or C_s is not None or C_t is not None:
        if C_s is None or C_t is None or C_s.shape != (B, L, r, r) or C_t.shape != (B, L, r, r):
            raise ValueError(f"C_s / C_t must both be [B, L, r, r] = {(B, L, r, r)}, got "
                             f"{None if C_s is None else tuple(C_s.shape)} and {None if C_t is None else tuple(C_t.shape)}")
    mu_s, mu_t = _f32(mu_s), _f32(mu_t.detach()).to(mu_s.device)
    if second_order:
        C_s, C_t = _f32(C_s), _f32(C_t.detach()).to(mu_s.device)
    valid = _example_mask(example_mask, B, mu_s.device)
    w = _layer_weights(layer_weights, L, mu_s)

    if normalize:
        if scale is None and C_t is None:
            raise ValueError("rationale_loss: normalize=True without C_t needs a fixed scale")
        e = teacher_energy(mu_t, C_t, centred=centred, example_mask=valid) if scale is None else \
            _f32(torch.as_tensor(scale, device=mu_s.device).detach())
        if e.shape != (L,):
            raise ValueError(f"scale must have shape ({L},), got {tuple(e.shape)}")
        s = e + eps
    else:
        s = torch.ones(L, dtype=mu_s.dtype, device=mu_s.device)

    zero = mu_s.new_zeros(())
    if first_order:
        d_mu = torch.where(valid[:, None, None], mu_s - mu_t, zero)
        mean_bl = d_mu.pow(2).sum(-1) / s  # [B, L]
        mean_term = _batch_reduce((mean_bl * w).sum(-1), valid, num_examples)
    else:
        mean_term = zero
    if second_order:
        d_C = torch.where(valid[:, None, None, None], C_s - C_t, zero)
        cov_bl = d_C.pow(2).sum((-1, -2)) / s.pow(2)  # [B, L]
        cov_term = _batch_reduce((cov_bl * w).sum(-1), valid, num_examples)
    else:
        cov_term = zero
    loss = mean_term + lam * cov_term
    return loss, {"mean": mean_term.detach(), "cov": cov_term.detach()}


def anchor_loss(
    a_s: Tensor,
    a_t: Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    *,
    layer_weights: Tensor | Sequence[float] | None = None,
    example_mask: Tensor | None = None,
    num_examples: int | Tensor | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """Answer-anchor loss ``mean_b sum_l w_l ||a_S[b, l] - a_T[b, l]||^2 / s_l``.

    Args:
        a_s, a_t: ``[B, L, r]`` student / teacher anchors in the subspace (``Basis.project_anchor``).
        normalize: ``s_l = mean_b ||a_T[b, l]||^2 + eps`` (batch mean over valid examples, detached) **(choice)**;
            False: ``s_l = 1``.
        layer_weights: ``[L]``; default uniform ``1/L`` **(choice)**, the same as ``rationale_loss``, so that ``beta``
            balances the two losses whatever the number of layers (pass ones for the literal ``sum_l``).
        example_mask, num_examples, scale: as in ``rationale_loss`` (``scale [L]`` replaces the batch estimate of
            ``mean_b ||a_T||^2``).

    Returns: float32 scalar.
    """
    a_s, a_t, valid, w = _student_teacher(a_s, a_t, "a_s / a_t", example_mask, layer_weights)
    L = a_s.shape[1]
    if normalize:
        e = _masked_layer_mean(a_t.pow(2).sum(-1), valid) if scale is None else \
            _f32(torch.as_tensor(scale, device=a_s.device).detach())
        if e.shape != (L,):
            raise ValueError(f"scale must have shape ({L},), got {tuple(e.shape)}")
        s = e + eps
    else:
        s = torch.ones(L, dtype=a_s.dtype, device=a_s.device)
    d = torch.where(valid[:, None, None], a_s - a_t, a_s.new_zeros(()))
    per_example = (d.pow(2).sum(-1) / s * w).sum(-1)
    return _batch_reduce(per_example, valid, num_examples)


def standardized_loss(
    x_s: Tensor,
    x_t: Tensor,
    var_t: Tensor,
    eps: float = 1e-6,
    *,
    layer_weights: Tensor | Sequence[float] | None = None,
    example_mask: Tensor | None = None,
    num_examples: int | Tensor | None = None,
) -> Tensor:
    """``mean_b sum_l w_l mean_r (x_S[b, l, r] - x_T[b, l, r])^2 / (var_T[b, l, r] + eps)``.

    The squared error in units of the teacher's spread across examples, per layer and subspace direction (CODI
    divides by the teacher's std for the same reason): a direction where every example's teacher state is nearly the
    same (the structure all problems share) weighs as much as one that carries the example's own values, so the
    loss is not dominated by matching what is common.

    Args:
        x_s, x_t: ``[B, L, r]`` student / teacher statistics (e.g. a thought mean and the teacher's prefix mean).
        var_t: ``[B, L, r]`` (or broadcastable) the teacher's variance of ``x_t`` across examples, a constant.
        layer_weights, example_mask, num_examples: as in ``rationale_loss``.
    Returns: float32 scalar.
    """
    x_s, x_t, valid, w = _student_teacher(x_s, x_t, "x_s / x_t", example_mask, layer_weights)
    var = _f32(torch.as_tensor(var_t).detach()).to(x_s.device)
    d = torch.where(valid[:, None, None], x_s - x_t, x_s.new_zeros(()))
    per_example = ((d.pow(2) / (var + eps)).mean(-1) * w).sum(-1)
    return _batch_reduce(per_example, valid, num_examples)


def combine(
    task: Tensor,
    rat: Tensor | None,
    anc: Tensor | None,
    alpha: float = 1.0,
    beta: float = 1.0,
    use_anchor: bool = True,
    use_rationale: bool = True,
) -> Tensor:
    """``L = L_task + alpha * (L_rat + beta * L_anc)``. A switched-off term is skipped (not multiplied by 0, so a
    NaN there cannot leak) and may be passed as None."""
    extra = None
    if use_rationale:
        if rat is None:
            raise ValueError("use_rationale=True but no rationale loss given")
        extra = rat
    if use_anchor:
        if anc is None:
            raise ValueError("use_anchor=True but no anchor loss given")
        extra = beta * anc if extra is None else extra + beta * anc
    return task if extra is None else task + alpha * extra
