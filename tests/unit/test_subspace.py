"""The subspace fit (streaming second moments, bases, layer factor) and the trajectory statistics."""

from __future__ import annotations

import pytest
import torch

from lori.errors import LoriError
from lori.subspace import (
    Basis,
    LayerGramAccumulator,
    SecondMomentAccumulator,
    fit_bases,
    fit_layer_factor,
    masked_moments,
    select_rank,
    triu_pack,
    triu_unpack,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(d: int, r: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return q


def _low_rank_batch(B, L, T, d, r0, g, Q=None):
    """h[b, l, t] = Q_l c with c ~ N(0, diag(scales)); returns h (float32) and the true bases Q [L, d, r0]."""
    if Q is None:
        Q = torch.stack([_orthonormal(d, r0, g) for _ in range(L)])
    scales = torch.linspace(3.0, 1.0, r0, dtype=torch.float64)
    c = torch.randn(B, L, T, r0, generator=g, dtype=torch.float64) * scales
    h = torch.einsum("bltr,ldr->bltd", c, Q)
    return h.float(), Q


def _random_mask(B, T, g, min_len=1):
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    return torch.arange(T)[None, :] < lengths[:, None], lengths


def _principal_cosines(U_est: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(U_est.double().transpose(-1, -2) @ Q.double())


# ------------------------------------------------------------------------------------------------ accumulator


def test_accumulator_matches_direct_reference_and_ignores_padding():
    g = _gen(0)
    B, L, T, d = 5, 3, 7, 6
    h = torch.randn(B, L, T, d, generator=g)
    mask, _ = _random_mask(B, T, g)
    pad = ~mask[:, None, :, None]
    garbage = torch.full_like(h, float("nan"))
    garbage[:, :, ::2] = float("inf")
    h_pad = torch.where(pad, garbage, h)  # padding holds NaN / inf: must not matter
    assert (~mask).any()

    acc = SecondMomentAccumulator(L, d)
    acc.update(h_pad, mask)

    n = int(mask.sum())
    assert acc.count.tolist() == [n] * L
    for l in range(L):
        X = h[:, l][mask].double()  # [n, d]: stack all valid positions
        torch.testing.assert_close(acc.second_moment[l], X.T @ X, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(acc.first_moment[l], X.sum(0), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(acc.second_moment).all()


def test_accumulator_merge_of_halves_equals_whole_and_state_roundtrip():
    g = _gen(1)
    B, L, T, d = 6, 2, 5, 4
    h = torch.randn(B, L, T, d, generator=g)
    mask, _ = _random_mask(B, T, g)
    whole = SecondMomentAccumulator(L, d)
    whole.update(h, mask)
    a, b = SecondMomentAccumulator(L, d), SecondMomentAccumulator(L, d)
    a.update(h[:3], mask[:3])
    b.update(h[3:], mask[3:])
    a.merge(b)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, rtol=1e-12, atol=1e-12)
    c = SecondMomentAccumulator(L, d)
    c.load_state_dict(whole.state_dict())
    for k, v in whole.state_dict().items():
        assert torch.equal(c.state_dict()[k], v)
    with pytest.raises(ValueError):
        SecondMomentAccumulator(L, d + 1).merge(whole)
    with pytest.raises(ValueError):
        whole.update(h[:, :, :, :3], mask)


def test_empty_accumulator_refuses_to_fit():
    with pytest.raises(LoriError):
        fit_bases(SecondMomentAccumulator(2, 4), rank=2)


# ------------------------------------------------------------------------------------------------ fit


def test_fit_recovers_known_low_rank_subspace_per_layer():
    g = _gen(2)
    B, L, T, d, r0 = 64, 3, 6, 12, 4
    acc = SecondMomentAccumulator(L, d)
    Q = None
    for _ in range(3):
        h, Q = _low_rank_batch(B, L, T, d, r0, g, Q)
        mask, _ = _random_mask(B, T, g)
        acc.update(h, mask)
    basis = fit_bases(acc, rank=r0)
    assert basis.U.shape == (L, d, r0) and basis.U.dtype == torch.float32
    assert basis.eigenvalues.shape == (L, d) and basis.energy_captured.shape == (L,)
    assert not basis.shared
    torch.testing.assert_close(basis.energy_captured, torch.ones(L, dtype=torch.float64), rtol=0, atol=1e-6)
    # right subspace: all principal angles ~ 0 (cosines ~ 1)
    cos = _principal_cosines(basis.U, Q)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)
    # orthonormal columns, descending eigenvalues, the tail is ~0
    eye = torch.eye(r0).expand(L, r0, r0)
    torch.testing.assert_close(basis.U.transpose(1, 2) @ basis.U, eye, rtol=0, atol=1e-5)
    assert (basis.eigenvalues[:, :-1] >= basis.eigenvalues[:, 1:]).all()
    assert float(basis.eigenvalues[:, r0:].max()) < 1e-8 * float(basis.eigenvalues[:, 0].min())
    # a smaller rank captures less than all
    assert (fit_bases(acc, rank=r0 - 1).energy_captured < 0.999).all()


def test_fit_is_deterministic_with_sign_convention():
    g = _gen(3)
    h, _ = _low_rank_batch(16, 2, 5, 8, 3, g)
    acc = SecondMomentAccumulator(2, 8)
    acc.update(h)
    b1, b2 = fit_bases(acc, rank=3), fit_bases(acc, rank=3)
    assert torch.equal(b1.U, b2.U)
    idx = b1.U.abs().argmax(dim=1, keepdim=True)
    assert (torch.gather(b1.U, 1, idx) > 0).all()


def test_energy_threshold_selects_expected_rank():
    # Spectrum built exactly: M = diag(ev) per layer via h = sqrt(n*ev_i) e_i, one position per direction.
    d, L = 6, 2
    ev = torch.tensor([[50.0, 30.0, 10.0, 5.0, 4.0, 1.0], [90.0, 5.0, 3.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    h = torch.zeros(1, L, d, d, dtype=torch.float64)
    for l in range(L):
        h[0, l] = torch.diag(ev[l].sqrt())  # T = d positions; sum_t h h^T = diag(ev)
    acc = SecondMomentAccumulator(L, d)
    acc.update(h)
    # cumulative energy layer 0: .5 .8 .9 .95 .99 1 ; layer 1: .9 .95 .98 .99 1 1
    assert fit_bases(acc, rank=None, energy=0.9).rank == 3  # max(3, 1)
    assert fit_bases(acc, rank=None, energy=0.95).rank == 4  # max(4, 2)
    assert fit_bases(acc, rank=None, energy=0.5).rank == 1
    assert fit_bases(acc, rank=None, energy=1.0).rank == 6  # layer 0 needs all 6
    assert fit_bases(acc, rank=2, energy=0.95).rank == 2  # rank caps the energy choice
    b = fit_bases(acc, rank=None, energy=0.9)
    torch.testing.assert_close(b.energy_captured, torch.tensor([0.9, 0.98], dtype=torch.float64))
    assert select_rank(torch.tensor([[3.0, 1.0, 0.0]]), None, 1.0) == 2  # exactly rank 2 -> 2, not 3
    with pytest.raises(ValueError):
        fit_bases(acc, rank=None, energy=None)
    with pytest.raises(ValueError):
        fit_bases(acc, rank=d + 1)
    with pytest.raises(ValueError):
        fit_bases(acc, rank=None, energy=1.5)


def test_shared_vs_per_layer():
    g = _gen(4)
    B, L, T, d, r0 = 64, 3, 5, 10, 2
    Q1 = _orthonormal(d, r0, g)
    Qs = Q1.unsqueeze(0).expand(L, d, r0)
    h, _ = _low_rank_batch(B, L, T, d, r0, g, Qs)
    acc = SecondMomentAccumulator(L, d)
    acc.update(h)
    shared = fit_bases(acc, rank=r0, shared=True)
    assert shared.shared and shared.U.shape == (L, d, r0)
    assert torch.equal(shared.U[0], shared.U[1]) and torch.equal(shared.U[0], shared.U[2])
    torch.testing.assert_close(shared.energy_captured, torch.ones(L, dtype=torch.float64), rtol=0, atol=1e-6)
    cos = _principal_cosines(shared.U[0], Q1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)
    # shared spectrum = pooled second moment, repeated on every row
    pooled = acc.second_moment.sum(0) / acc.count.sum()
    torch.testing.assert_close(shared.eigenvalues[0], torch.linalg.eigvalsh(pooled).flip(0).clamp_min(0))
    assert torch.equal(shared.eigenvalues[0], shared.eigenvalues[2])

    # Different subspaces per layer: a rank-r0 shared basis cannot hold them, per-layer bases can.
    h2, _ = _low_rank_batch(B, L, T, d, r0, g)
    acc2 = SecondMomentAccumulator(L, d)
    acc2.update(h2)
    assert (fit_bases(acc2, rank=r0, shared=True).energy_captured < 0.9).all()
    assert (fit_bases(acc2, rank=r0, shared=False).energy_captured > 0.999).all()


def test_project_and_dict_roundtrip(tmp_path):
    g = _gen(5)
    B, L, T, d, r0 = 8, 2, 4, 6, 3
    h, _ = _low_rank_batch(B, L, T, d, r0, g)
    acc = SecondMomentAccumulator(L, d)
    acc.update(h)
    basis = fit_bases(acc, rank=r0)
    z = basis.project(h)
    assert z.shape == (B, L, T, r0)
    for l in range(L):
        torch.testing.assert_close(z[:, l], h[:, l] @ basis.U[l])
    # extra leading dims, and single positions (anchors)
    assert basis.project(h[None]).shape == (1, B, L, T, r0)
    torch.testing.assert_close(basis.project_anchor(h[:, :, 0]), z[:, :, 0])
    # reconstruction exact for data in the subspace
    rec = torch.einsum("bltr,ldr->bltd", z, basis.U)
    torch.testing.assert_close(rec, h, rtol=1e-4, atol=1e-4)

    from safetensors.torch import load_file, save_file

    save_file(basis.to_dict(), str(tmp_path / "basis.safetensors"))
    back = Basis.from_dict(load_file(str(tmp_path / "basis.safetensors")))
    assert torch.equal(back.U, basis.U) and back.shared == basis.shared and back.V is None
    assert torch.equal(back.eigenvalues, basis.eigenvalues)
    assert torch.equal(back.energy_captured, basis.energy_captured)


def test_layer_factor_streaming_and_known_layer_rank():
    g = _gen(6)
    B, L, T, d, r = 32, 4, 5, 8, 3
    # Layer mode of rank 2: h[b, l, t] = sum_k A[l, k] g_k[b, t] with shared-per-layer-basis content.
    A = _orthonormal(L, 2, g)  # [L, 2]
    Q = _orthonormal(d, r, g)
    c = torch.randn(2, B, T, r, generator=g, dtype=torch.float64)
    h = torch.einsum("lk,kbtr,dr->bltd", A, c, Q).float()
    acc = SecondMomentAccumulator(L, d)
    acc.update(h)
    basis = fit_bases(acc, rank=r, shared=True)

    whole = LayerGramAccumulator(basis)
    whole.update(h)
    half1, half2 = LayerGramAccumulator(basis), LayerGramAccumulator(basis)
    half1.update(h[:10])
    half2.update(h[10:])
    half1.merge(half2)
    torch.testing.assert_close(half1.gram, whole.gram, rtol=1e-10, atol=1e-10)
    # reference: Gram of the mode-L unfolding of the projected trajectories
    z = basis.project(h).double()  # [B, L, T, r]
    Zl = z.permute(1, 0, 2, 3).reshape(L, -1)
    torch.testing.assert_close(whole.gram, Zl @ Zl.T, rtol=1e-5, atol=1e-5)

    fitted = fit_layer_factor(basis, whole, rank=None, energy=0.999)
    assert fitted.V.shape == (L, 2) and fitted.layer_rank == 2
    cos = _principal_cosines(fitted.V, A)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)
    assert fitted.project_layers(basis.project(h)).shape == (B, 2, T, r)
    back = Basis.from_dict(fitted.to_dict())
    assert torch.equal(back.V, fitted.V) and torch.equal(back.layer_eigenvalues, fitted.layer_eigenvalues)


def test_layer_gram_per_layer_basis_uses_reconstructions():
    g = _gen(7)
    B, L, T, d = 4, 3, 5, 6
    h = torch.randn(B, L, T, d, generator=g)
    mask, _ = _random_mask(B, T, g)
    acc = SecondMomentAccumulator(L, d)
    acc.update(h, mask)
    basis = fit_bases(acc, rank=2)
    lg = LayerGramAccumulator(basis)
    h_pad = h.clone()
    h_pad.transpose(0, 1)[:, ~mask] = 1e30
    lg.update(h_pad, mask)
    U = basis.U.double()
    rec = torch.einsum("ldr,lnr->lnd", U, torch.einsum("ldr,lnd->lnr", U, h.double().transpose(0, 1)[:, mask]))
    ref = torch.einsum("lnd,mnd->lm", rec, rec)
    torch.testing.assert_close(lg.gram, ref, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------ statistics


def test_masked_moments_match_torch_reference():
    g = _gen(8)
    B, L, T, r = 5, 3, 9, 4
    z = torch.randn(B, L, T, r, generator=g)
    mask, lengths = _random_mask(B, T, g)
    mu, C = masked_moments(z, mask, centred=True)
    mu_u, C_u = masked_moments(z, mask, centred=False)
    assert mu.shape == (B, L, r) and C.shape == (B, L, r, r) and mu.dtype == torch.float32
    for b in range(B):
        for l in range(L):
            x = z[b, l, : lengths[b]]
            torch.testing.assert_close(mu[b, l], x.mean(0))
            torch.testing.assert_close(C[b, l], torch.cov(x.T, correction=0).reshape(r, r), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(C_u[b, l], x.T @ x / len(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mu_u[b, l], mu[b, l])


def test_masked_moments_single_position_and_empty_rows():
    z = torch.randn(3, 2, 4, 3)
    mask = torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, True, True]])
    mu, C = masked_moments(z, mask)
    torch.testing.assert_close(mu[0], z[0, :, 0])
    assert torch.equal(C[0], torch.zeros_like(C[0]))  # one position: population covariance is 0
    assert torch.equal(mu[1], torch.zeros_like(mu[1])) and torch.equal(C[1], torch.zeros_like(C[1]))  # n = 0


def test_masked_moments_length_and_padding_invariance():
    g = _gen(9)
    B, L, T, r, k = 3, 2, 5, 4, 3
    z = torch.randn(B, L, T, r, generator=g, dtype=torch.float64)
    mask, lengths = _random_mask(B, T, g)
    mu, C = masked_moments(z, mask)
    # repeat each valid position k times (T -> kT): same statistics
    zr = torch.zeros(B, L, k * T, r, dtype=torch.float64)
    mr = torch.zeros(B, k * T, dtype=torch.bool)
    for b in range(B):
        n = int(lengths[b])
        zr[b, :, : k * n] = z[b, :, :n].repeat_interleave(k, dim=1)
        mr[b, : k * n] = True
    mu_r, C_r = masked_moments(zr, mr)
    torch.testing.assert_close(mu_r, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C_r, C, rtol=1e-12, atol=1e-12)
    # extra padding with huge values, inf and NaN: same statistics, finite gradients that vanish on padding
    extra = torch.full((B, L, 4, r), 1e30, dtype=torch.float64)
    extra[:, :, 1] = float("inf")
    extra[:, :, 2] = float("nan")
    zp = torch.cat([z, extra], dim=2)
    zp[..., :T, :].transpose(0, 1)[:, ~mask] = float("nan")  # in-place padding garbage as well
    zp.requires_grad_(True)
    mp = torch.cat([mask, torch.zeros(B, 4, dtype=torch.bool)], dim=1)
    mu_p, C_p = masked_moments(zp, mp)
    torch.testing.assert_close(mu_p, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C_p, C, rtol=1e-12, atol=1e-12)
    (mu_p.sum() + C_p.pow(2).sum()).backward()
    assert torch.isfinite(zp.grad).all()
    assert (zp.grad.transpose(1, 2)[~mp] == 0).all()


def test_masked_moments_backprop_into_z():
    z = torch.randn(2, 2, 5, 3, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    mu, C = masked_moments(z, mask)
    (mu.pow(2).sum() + C.pow(2).sum()).backward()
    assert z.grad is not None and z.grad[:, :, :2].abs().sum() > 0
    assert (z.grad[1, :, 2:] == 0).all()
    # float64 in -> float64 out; half precision in -> float32 out
    assert masked_moments(z.detach().double(), mask)[0].dtype == torch.float64
    assert masked_moments(z.detach().bfloat16(), mask)[1].dtype == torch.float32


def test_triu_pack_unpack_roundtrip():
    g = _gen(10)
    A = torch.randn(2, 3, 5, 5, generator=g)
    S = A + A.transpose(-1, -2)
    p = triu_pack(S)
    assert p.shape == (2, 3, 15)
    assert torch.equal(triu_unpack(p), S)
    assert torch.equal(triu_unpack(p, r=5), S)
    assert torch.equal(triu_pack(triu_unpack(p)), p)
    i, j = torch.triu_indices(5, 5)
    assert torch.equal(p[0, 0], S[0, 0, i, j])
    with pytest.raises(ValueError):
        triu_unpack(torch.zeros(3, 7))
    with pytest.raises(ValueError):
        triu_unpack(p, r=4)
    # differentiable
    q = p.clone().requires_grad_(True)
    triu_unpack(q).sum().backward()
    off_diag = torch.tensor([a != b for a, b in zip(i.tolist(), j.tolist())])
    assert (q.grad[..., off_diag] == 2).all() and (q.grad[..., ~off_diag] == 1).all()
