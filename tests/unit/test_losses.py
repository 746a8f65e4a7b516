"""LoRi losses (rationale statistics, anchor, combination) and the task cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lori.losses import anchor_loss, combine, rationale_loss, standardized_loss, teacher_energy, token_cross_entropy
from lori.subspace import masked_moments, triu_pack, triu_unpack


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stats(B=4, L=3, T=6, r=4, seed=0, scale=1.0):
    g = _gen(seed)
    z = torch.randn(B, L, T, r, generator=g) * scale
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return z, mask


# ------------------------------------------------------------------------------------------------ rationale


def test_rationale_zero_when_equal_positive_otherwise():
    z, mask = _stats()
    mu, C = masked_moments(z, mask)
    loss, parts = rationale_loss(mu, C, mu.clone(), C.clone())
    assert float(loss) < 1e-10 and float(parts["mean"]) == 0.0 and float(parts["cov"]) == 0.0
    # teacher stored as a packed triangle and unpacked: still exactly equal
    loss2, _ = rationale_loss(mu, C, mu, triu_unpack(triu_pack(C)))
    assert float(loss2) < 1e-10
    zs, ms = _stats(T=5, seed=1)
    mu_s, C_s = masked_moments(zs, ms)
    for kw in ({}, {"normalize": False}, {"first_order": False}, {"second_order": False}):
        loss, parts = rationale_loss(mu_s, C_s, mu, C, **kw)
        assert float(loss) > 0


def test_rationale_matches_reference_formula():
    z_t, m_t = _stats(seed=2)
    z_s, m_s = _stats(T=5, seed=3)
    mu_t, C_t = masked_moments(z_t, m_t)
    mu_s, C_s = masked_moments(z_s, m_s)
    B, L = mu_t.shape[:2]
    w = torch.tensor([0.2, 0.3, 0.5])
    lam, eps = 0.7, 1e-6
    # unnormalised
    ref_mean = ((mu_s - mu_t).pow(2).sum(-1) * w).sum(-1).mean()
    ref_cov = (((C_s - C_t) ** 2).sum((-1, -2)) * w).sum(-1).mean()
    loss, parts = rationale_loss(mu_s, C_s, mu_t, C_t, layer_weights=w, lam=lam, normalize=False)
    torch.testing.assert_close(parts["mean"], ref_mean)
    torch.testing.assert_close(parts["cov"], ref_cov)
    torch.testing.assert_close(loss, ref_mean + lam * ref_cov)
    # normalised by the teacher's per-layer energy e_l = mean_b(||mu_T||^2 + tr C_T) (centred)
    e = (mu_t.pow(2).sum(-1) + torch.diagonal(C_t, dim1=-2, dim2=-1).sum(-1)).mean(0)
    torch.testing.assert_close(teacher_energy(mu_t, C_t), e)
    # for centred C that is the mean squared norm of the valid projected teacher states
    e_direct = torch.stack([z_t[b, :, : int(m_t[b].sum())].pow(2).sum(-1).mean(-1) for b in range(B)]).mean(0)
    torch.testing.assert_close(e, e_direct)
    s = e + eps
    ref_mean_n = ((mu_s - mu_t).pow(2).sum(-1) / s * w).sum(-1).mean()
    ref_cov_n = (((C_s - C_t) ** 2).sum((-1, -2)) / s**2 * w).sum(-1).mean()
    loss, parts = rationale_loss(mu_s, C_s, mu_t, C_t, layer_weights=w, lam=lam, eps=eps)
    torch.testing.assert_close(loss, ref_mean_n + lam * ref_cov_n)
    torch.testing.assert_close(parts["mean"], ref_mean_n)
    # default weights are uniform 1/L
    l_default, _ = rationale_loss(mu_s, C_s, mu_t, C_t)
    l_uniform, _ = rationale_loss(mu_s, C_s, mu_t, C_t, layer_weights=torch.full((L,), 1.0 / L))
    torch.testing.assert_close(l_default, l_uniform)
    # uncentred second moment: e_l = mean_b tr C_T
    mu_tu, C_tu = masked_moments(z_t, m_t, centred=False)
    torch.testing.assert_close(teacher_energy(mu_tu, C_tu, centred=False), e_direct)


def test_rationale_switches_zero_the_other_part():
    mu_t, C_t = masked_moments(*_stats(seed=4))
    mu_s, C_s = masked_moments(*_stats(seed=5))
    full, p_full = rationale_loss(mu_s, C_s, mu_t, C_t, lam=2.0)
    first, p_first = rationale_loss(mu_s, C_s, mu_t, C_t, lam=2.0, second_order=False)
    second, p_second = rationale_loss(mu_s, C_s, mu_t, C_t, lam=2.0, first_order=False)
    assert float(p_first["cov"]) == 0.0 and float(p_first["mean"]) > 0
    assert float(p_second["mean"]) == 0.0 and float(p_second["cov"]) > 0
    torch.testing.assert_close(first, p_full["mean"])
    torch.testing.assert_close(second, 2.0 * p_full["cov"])
    torch.testing.assert_close(full, first + second)
    with pytest.raises(ValueError):
        rationale_loss(mu_s, C_s, mu_t, C_t, first_order=False, second_order=False)


def test_rationale_normalised_is_scale_invariant():
    z_t, m_t = _stats(seed=6)
    z_s, m_s = _stats(T=5, seed=7)
    base, _ = rationale_loss(*masked_moments(z_s, m_s), *masked_moments(z_t, m_t), eps=0.0)
    for c in (1e-2, 30.0):
        scaled, _ = rationale_loss(*masked_moments(c * z_s, m_s), *masked_moments(c * z_t, m_t), eps=0.0)
        torch.testing.assert_close(scaled, base, rtol=1e-4, atol=0)
    # a one-position teacher rationale (C_T = 0) does not blow up the covariance term
    mu_t, C_t = masked_moments(z_t[:, :, :1], None)
    assert float(C_t.abs().max()) == 0.0
    loss, parts = rationale_loss(*masked_moments(z_s, m_s), mu_t, C_t)
    assert torch.isfinite(loss) and float(parts["cov"]) < 100


def test_rationale_gradients_reach_student_not_teacher():
    z_t, m_t = _stats(seed=8)
    z_s, m_s = _stats(T=5, seed=9)
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    mu_t, C_t = masked_moments(z_t, m_t)
    mu_s, C_s = masked_moments(z_s, m_s)
    mu_s.retain_grad()
    C_s.retain_grad()
    loss, _ = rationale_loss(mu_s, C_s, mu_t, C_t)
    loss.backward()
    assert mu_s.grad is not None and mu_s.grad.abs().sum() > 0
    assert C_s.grad is not None and C_s.grad.abs().sum() > 0
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None  # teacher side detached
    # direct teacher leaves as well
    mu_t2 = mu_t.detach().clone().requires_grad_(True)
    C_t2 = C_t.detach().clone().requires_grad_(True)
    mu_s2 = mu_s.detach().clone().requires_grad_(True)
    C_s2 = C_s.detach().clone().requires_grad_(True)
    rationale_loss(mu_s2, C_s2, mu_t2, C_t2)[0].backward()
    assert mu_t2.grad is None and C_t2.grad is None
    assert mu_s2.grad is not None and C_s2.grad is not None


def test_rationale_example_mask_and_global_denominator():
    mu_t, C_t = masked_moments(*_stats(B=6, seed=10))
    mu_s, C_s = masked_moments(*_stats(B=6, seed=11))
    keep = torch.tensor([True, True, False, True, False, True])
    # left-out examples may hold NaN: nothing leaks
    mu_s_bad, C_s_bad = mu_s.clone(), C_s.clone()
    mu_s_bad[~keep] = float("nan")
    C_s_bad[~keep] = float("inf")
    masked, _ = rationale_loss(mu_s_bad, C_s_bad, mu_t, C_t, example_mask=keep)
    ref, _ = rationale_loss(mu_s[keep], C_s[keep], mu_t[keep], C_t[keep])
    torch.testing.assert_close(masked, ref)
    # micro-batches with a fixed scale and the global example count sum to the full-batch loss
    scale = teacher_energy(mu_t, C_t)
    full, _ = rationale_loss(mu_s, C_s, mu_t, C_t, scale=scale)
    halves = sum(
        rationale_loss(mu_s[sl], C_s[sl], mu_t[sl], C_t[sl], scale=scale, num_examples=6)[0]
        for sl in (slice(0, 2), slice(2, 6))
    )
    torch.testing.assert_close(halves, full)


# ------------------------------------------------------------------------------------------------ anchor


def test_anchor_loss():
    g = _gen(12)
    B, L, r = 5, 3, 4
    a_t = torch.randn(B, L, r, generator=g) * 3
    a_s = torch.randn(B, L, r, generator=g, requires_grad=True)
    assert float(anchor_loss(a_t.clone(), a_t)) == 0.0
    ref_plain = ((a_s - a_t).pow(2).sum(-1) / L).sum(-1).mean()
    torch.testing.assert_close(anchor_loss(a_s, a_t, normalize=False), ref_plain)
    ones = torch.ones(L)
    torch.testing.assert_close(anchor_loss(a_s, a_t, normalize=False, layer_weights=ones), ref_plain * L)
    s = a_t.pow(2).sum(-1).mean(0) + 1e-6
    ref = ((a_s - a_t).pow(2).sum(-1) / s / L).sum(-1).mean()
    loss = anchor_loss(a_s, a_t)
    torch.testing.assert_close(loss, ref)
    # joint rescaling leaves the normalised loss unchanged
    scaled = anchor_loss(10 * a_s, 10 * a_t, eps=0.0)
    torch.testing.assert_close(scaled, anchor_loss(a_s, a_t, eps=0.0), rtol=1e-5, atol=0)
    a_t_leaf = a_t.clone().requires_grad_(True)
    anchor_loss(a_s, a_t_leaf).backward()
    assert a_s.grad is not None and a_s.grad.abs().sum() > 0 and a_t_leaf.grad is None
    with pytest.raises(ValueError):
        anchor_loss(a_s, a_t[:, :2])


# ------------------------------------------------------------------------------------------------ combine


def test_combine():
    task, rat, anc = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert float(combine(task, rat, anc)) == 10.0
    assert float(combine(task, rat, anc, alpha=0.5, beta=2.0)) == 2.0 + 0.5 * (3.0 + 10.0)
    nan = torch.tensor(float("nan"))
    assert float(combine(task, rat, nan, use_anchor=False)) == 5.0
    assert float(combine(task, nan, anc, use_rationale=False)) == 7.0
    assert float(combine(task, None, None, use_rationale=False, use_anchor=False)) == 2.0
    with pytest.raises(ValueError):
        combine(task, None, anc)


# ------------------------------------------------------------------------------------------------ task CE


def _ce_batch(B=4, T=7, V=11, seed=13):
    g = _gen(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.4] = -100
    return logits, labels


def test_token_cross_entropy_mean_and_global_count():
    logits, labels = _ce_batch()
    n = int((labels != -100).sum())
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(token_cross_entropy(logits, labels), ref)
    torch.testing.assert_close(token_cross_entropy(logits, labels, num_tokens=n), ref)
    torch.testing.assert_close(token_cross_entropy(logits, labels, num_tokens=torch.tensor(n)), ref)
    # labels are aligned: labels[b, t] is the target of logits[b, t]
    one = torch.full_like(labels, -100)
    one[1, 3] = 2
    torch.testing.assert_close(token_cross_entropy(logits, one), -logits[1, 3].log_softmax(-1)[2])
    # nothing supervised -> 0
    assert float(token_cross_entropy(logits.detach(), torch.full_like(labels, -100))) == 0.0
    # half precision is upcast
    assert token_cross_entropy(logits.detach().bfloat16(), labels).dtype == torch.float32


def test_token_cross_entropy_micro_batches_sum_to_full_batch():
    logits, labels = _ce_batch(B=6)
    n = int((labels != -100).sum())
    full = token_cross_entropy(logits, labels)
    (g_full,) = torch.autograd.grad(full, logits)
    parts = [token_cross_entropy(logits[sl], labels[sl], num_tokens=n) for sl in (slice(0, 2), slice(2, 6))]
    total = parts[0] + parts[1]
    (g_split,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_split, g_full)
    with pytest.raises(ValueError):
        token_cross_entropy(logits, labels, num_tokens=0)


def test_standardized_loss_is_the_squared_error_in_units_of_the_teachers_variance():
    from lori.losses import standardized_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, 5, generator=g, requires_grad=True), torch.randn(4, 3, 5, generator=g)
    var = torch.rand(3, 5, generator=g) + 0.5
    mask = torch.tensor([True, True, False, True])
    got = standardized_loss(s, t, var, eps=0.0, example_mask=mask, num_examples=7)
    want = sum(((s[b] - t[b]) ** 2 / var).mean(-1).mean() for b in (0, 1, 3)) / 7
    torch.testing.assert_close(got, want)
    got.backward()
    assert s.grad[2].abs().sum() == 0 and s.grad[0].abs().sum() > 0  # a masked example gets no gradient
    # the error is counted in units of each direction's spread: 1 where var = 0.01 counts 100, where var = 100, 0.01
    one = standardized_loss(torch.ones(1, 1, 2), torch.zeros(1, 1, 2), torch.tensor([1e-2, 1e2]), eps=0.0)
    torch.testing.assert_close(one, torch.tensor((100 + 0.01) / 2))


# ------------------------------------------------------------------------------------------------ golden values
# The LoRi terms on tensors small enough to compute by hand (B = 2 examples, L = 2 layers, r = 2; default layer
# weights 1/2). Teacher means and diagonal covariances:
#   mu_T = [[[1,0],[0,2]], [[1,2],[2,0]]]    C_T = diag: [[(1,1),(2,0)], [(0,0),(0,2)]]
# so ||mu_T||^2 = [[1,4],[5,4]], tr C_T = [[2,2],[0,2]], ||C_T||_F^2 = [[2,4],[0,4]]. Centred energy
# e_l = mean_b(||mu_T||^2 + tr C_T) = [(3+5)/2, (6+6)/2] = [4, 6]; uncentred e_l = mean_b tr C_T = [1, 2].
# The student is 0 except mu_S[1,0] = [1,0] (so ||mu_S - mu_T||^2 = [[1,4],[4,4]]) and C_S[0,1] = diag(1,0) (so
# ||C_S - C_T||_F^2 = [[2,1],[0,4]]).


def _golden_stats():
    mu_t = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 2.0], [2.0, 0.0]]])
    C_t = torch.diag_embed(torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]))
    mu_s = torch.zeros(2, 2, 2)
    mu_s[1, 0] = torch.tensor([1.0, 0.0])
    C_s = torch.zeros(2, 2, 2, 2)
    C_s[0, 1] = torch.diag(torch.tensor([1.0, 0.0]))
    return mu_s, C_s, mu_t, C_t


def test_lori_terms_golden_values_computed_by_hand():
    mu_s, C_s, mu_t, C_t = _golden_stats()
    assert teacher_energy(mu_t, C_t).tolist() == [4.0, 6.0]
    assert teacher_energy(mu_t, C_t, centred=False).tolist() == [1.0, 2.0]
    # normalised, centred, lam = 1/2:
    #   mean: b0 (1/4 + 4/6)/2 = 11/24, b1 (4/4 + 4/6)/2 = 20/24 -> 31/48
    #   cov:  b0 (2/16 + 1/36)/2 = 11/144, b1 (0/16 + 4/36)/2 = 8/144 -> 19/288
    loss, parts = rationale_loss(mu_s, C_s, mu_t, C_t, lam=0.5)
    assert float(parts["mean"]) == pytest.approx(31 / 48, rel=1e-5)
    assert float(parts["cov"]) == pytest.approx(19 / 288, rel=1e-5)
    assert float(loss) == pytest.approx(31 / 48 + 19 / 576, rel=1e-5)  # 391/576
    # uncentred energy [1, 2]: mean b0 (1 + 4/2)/2 = 3/2, b1 (4 + 4/2)/2 = 3 -> 9/4;
    # cov b0 (2 + 1/4)/2 = 9/8, b1 (0 + 4/4)/2 = 1/2 -> 13/16
    loss, parts = rationale_loss(mu_s, C_s, mu_t, C_t, lam=0.5, centred=False)
    assert (float(parts["mean"]), float(parts["cov"])) == pytest.approx((9 / 4, 13 / 16), rel=1e-5)
    assert float(loss) == pytest.approx(9 / 4 + 13 / 32, rel=1e-5)
    # example 1 masked out, global count 4: e_l over example 0 alone = [3, 6];
    # mean (1/3 + 4/6)/2 / 4 = 1/8, cov (2/9 + 1/36)/2 / 4 = 1/32
    loss, parts = rationale_loss(mu_s, C_s, mu_t, C_t, lam=0.5, example_mask=torch.tensor([True, False]),
                                 num_examples=4)
    assert (float(parts["mean"]), float(parts["cov"])) == pytest.approx((1 / 8, 1 / 32), rel=1e-5)
    # unnormalised, a fixed scale, and each order alone
    _, parts = rationale_loss(mu_s, C_s, mu_t, C_t, normalize=False)
    assert (float(parts["mean"]), float(parts["cov"])) == pytest.approx(((5 / 2 + 8 / 2) / 2, (3 / 2 + 4 / 2) / 2))
    _, parts = rationale_loss(mu_s, C_s, mu_t, C_t, scale=torch.tensor([1.0, 2.0]))  # = the uncentred energy
    assert (float(parts["mean"]), float(parts["cov"])) == pytest.approx((9 / 4, 13 / 16), rel=1e-5)
    loss, parts = rationale_loss(mu_s, None, mu_t, None, second_order=False, scale=torch.tensor([4.0, 6.0]))
    assert float(loss) == pytest.approx(31 / 48, rel=1e-5) and float(parts["cov"]) == 0.0


def test_anchor_standardized_and_combine_golden_values_computed_by_hand():
    # a_T = [[[2,0],[0,1]], [[0,2],[1,1]]]: ||a_T||^2 = [[4,1],[4,2]], scale s_l = [4, 3/2];
    # a_S = 0 but a_S[0,0] = [1,0]: ||a_S - a_T||^2 = [[1,1],[4,2]]
    a_t = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [1.0, 1.0]]])
    a_s = torch.zeros(2, 2, 2)
    a_s[0, 0] = torch.tensor([1.0, 0.0])
    # b0 (1/4 + 1/(3/2))/2 = 11/24, b1 (4/4 + 2/(3/2))/2 = 7/6 -> 13/16
    anc = anchor_loss(a_s, a_t)
    assert float(anc) == pytest.approx(13 / 16, rel=1e-5)
    assert float(anchor_loss(a_s, a_t, normalize=False)) == pytest.approx(((1 + 1) / 2 + (4 + 2) / 2) / 2)
    assert float(anchor_loss(a_s, a_t, normalize=False, layer_weights=[1.0, 1.0])) == pytest.approx(4.0)
    # standardised: x_T = [[[1,2]], [[3,0]]], x_S = 0, var_T = [1, 4]: b0 (1/1 + 4/4)/2 = 1, b1 (9/1 + 0)/2 = 9/2
    x_t = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])
    st = standardized_loss(torch.zeros(2, 1, 2), x_t, torch.tensor([1.0, 4.0]))
    assert float(st) == pytest.approx((1 + 9 / 2) / 2, rel=1e-5)
    # L = L_task + alpha (L_rat + beta L_anc) with L_task = 2, alpha = 1/2, beta = 2, L_rat = 391/576
    mu_s, C_s, mu_t, C_t = _golden_stats()
    rat, _ = rationale_loss(mu_s, C_s, mu_t, C_t, lam=0.5)
    total = combine(torch.tensor(2.0), rat, anc, alpha=0.5, beta=2.0)
    assert float(total) == pytest.approx(2 + 0.5 * (391 / 576 + 2 * 13 / 16), rel=1e-5)
    anchor_only = combine(torch.tensor(2.0), None, anc, alpha=0.5, use_rationale=False)
    assert float(anchor_only) == pytest.approx(2 + 0.5 * 13 / 16, rel=1e-5)
