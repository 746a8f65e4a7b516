"""The step-anchor controls: lori.basis (pca | random | full), lori.step_norm (std | none), lori.step_target
(hidden | token) and lori.cache_cov, each checked against the loss computed by hand on a tiny chains teacher."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

from lori.config import load_config
from lori.data.splits import load_split
from lori.errors import ConfigError
from lori.losses.task import IGNORE_INDEX
from lori.methods import METHODS
from lori.methods.common import Norm
from lori.methods.lori import method as lori_method
from lori.methods.lori.cache import load_cache
from lori.methods.lori.teacher import fingerprint, precompute, render_teacher, step_value_tokens
from lori.models.loading import build_model, builtin_tokenizer
from lori.subspace import SecondMomentAccumulator, fit_bases
from lori.subspace.spectrum import principal_cosines
from lori.training.loop import train

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.task=chains", "data.chain_steps=3", "data.train_size=40", "data.valid_size=5", "data.test_size=5"]
# final stage of a 3-stage curriculum: three thoughts, one per step, every step replaced
FINAL = 4


def overrides(teacher, cache, *extra) -> list[str]:
    return ["method=lori", *TINY, *DATA, f"lori.teacher={teacher}", f"lori.cache_dir={cache}", "lori.rank=4",
            "lori.calib_size=40", "lori.shard_size=40", "lori.precompute_batch=16", "lori.latent_steps=3",
            "curriculum.stages=3", "lori.step_anchors=true", *extra]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, save_random_teacher):
    cfg = load_config(None, ["method=lori", *TINY, *DATA])
    train_set = load_split(cfg.data, "train")
    return save_random_teacher(tmp_path_factory.mktemp("teacher"), cfg.model, train_set), train_set


def quiet_precompute(cfg):
    with contextlib.redirect_stdout(io.StringIO()):
        precompute(cfg)


def step_batch(cfg, train_set, n=6):
    """The student built as training builds it, its state, and a final-stage batch of the first ``n`` examples."""
    student, tok = build_model(cfg, METHODS["lori"], train_set)
    student.eval()
    state = lori_method.setup_training(student, cfg, train_set)
    items = [lori_method.METHOD.render(ex, tok, cfg, FINAL) | {"index": i} for i, ex in enumerate(train_set[:n])]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    return student, tok, state, batch, Norm(tokens=sum(it["n_target"] for it in items), examples=n)


def feed_states(student, batch):
    """Per step k, the state feeding its thought (<bot>, then the thought before): ``[B, L+1, K, d]``."""
    with torch.no_grad():
        out = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"],
                      latent_steps=batch["latent_steps"])
    return torch.cat([out.prompt_states[:, :, None], out.latent_states[:, :, :-1]], dim=2)


def test_each_switch_enters_the_fingerprint_only_when_not_the_default(teacher):
    folder, train_set = teacher
    fp = lambda *extra: fingerprint(load_config(None, overrides(folder, "x", *extra)), folder, train_set, 2)  # noqa
    default = fp()
    assert not {"basis", "basis_seed", "cache_cov", "step_norm", "step_target"} & set(default)
    assert fp("lori.basis=random") == default | {"basis": "random", "basis_seed": 0}
    assert fp("lori.basis=random", "lori.basis_seed=3") == default | {"basis": "random", "basis_seed": 3}
    assert fp("lori.basis_seed=3") == default  # the seed only matters for a random basis
    assert fp("lori.basis=full") == default | {"basis": "full"}
    assert fp("lori.cache_cov=false", "lori.second_order=false") == default | {"cache_cov": False}
    # the loss-side switches do not change what the cache holds
    assert fp("lori.step_norm=none") == fp("lori.step_target=token") == default


def test_config_refuses_what_the_cache_would_lack():
    with pytest.raises(ConfigError, match="lori.cache_cov=false .* lori.second_order"):
        load_config(None, ["method=lori", "lori.cache_cov=false"])
    with pytest.raises(ConfigError, match="lori.energy"):
        load_config(None, ["method=lori", "lori.basis=full", "lori.energy=0.9"])
    with pytest.raises(ConfigError, match="lori.step_anchors"):
        load_config(None, ["method=lori", "lori.cache_steps=false", "lori.step_anchors=true"])
    # the token target reads no cached step statistics
    load_config(None, ["method=lori", "lori.cache_steps=false", "lori.step_anchors=true", "lori.step_target=token"])
    load_config(None, ["method=lori", *TINY, "lori.basis=full", "lori.rank=64"])  # the rank is then the width


def test_random_basis_is_orthonormal_seeded_and_not_the_pca_basis():
    g = torch.Generator().manual_seed(0)
    acc = SecondMomentAccumulator(3, 12)
    scales = torch.linspace(3, 0.1, 12)  # a clear spectrum, so PCA's subspace is well defined
    acc.update(torch.randn(8, 3, 20, 12, generator=g) * scales, None)
    pca = fit_bases(acc, rank=4)
    rnd = fit_bases(acc, rank=4, kind="random", seed=0)
    assert rnd.U.shape == pca.U.shape == (3, 12, 4)
    torch.testing.assert_close(rnd.U.transpose(1, 2) @ rnd.U, torch.eye(4).expand(3, 4, 4), atol=1e-6, rtol=0)
    assert torch.equal(rnd.U, fit_bases(acc, rank=4, kind="random", seed=0).U)  # seeded
    assert not torch.allclose(rnd.U, fit_bases(acc, rank=4, kind="random", seed=1).U)
    assert not torch.allclose(rnd.U[0], rnd.U[1])  # one per layer
    assert float(principal_cosines(pca.U, rnd.U).pow(2).mean()) < 0.9  # not PCA's subspace
    assert bool((rnd.energy_captured < pca.energy_captured).all())  # PCA keeps the most energy at rank 4
    shared = fit_bases(acc, rank=4, shared=True, kind="random", seed=0)
    assert torch.equal(shared.U[0], shared.U[2])
    # with an energy threshold the random basis takes the rank PCA selects
    assert fit_bases(acc, rank=None, energy=0.8, kind="random").rank == fit_bases(acc, rank=None, energy=0.8).rank
    full = fit_bases(acc, rank=4, kind="full")
    assert torch.equal(full.U, torch.eye(12).expand(3, 12, 12)) and full.rank == 12
    torch.testing.assert_close(full.energy_captured, torch.ones(3, dtype=torch.float64))


@pytest.fixture(scope="module")
def full_width(teacher, tmp_path_factory):
    """A full-width cache without covariance (stored in bfloat16) and a config reading only the step anchors."""
    folder, train_set = teacher
    cache = tmp_path_factory.mktemp("full") / "cache"
    extra = ["lori.basis=full", "lori.cache_cov=false", "lori.second_order=false", "lori.first_order=false",
             "lori.anchor=false"]
    quiet_precompute(load_config(None, overrides(folder, cache, *extra)))
    return cache, extra


def test_full_width_is_the_identity_and_the_step_loss_is_the_standardised_mse_by_hand(teacher, full_width):
    folder, train_set = teacher
    cache, extra = full_width
    stats = load_cache(cache)
    assert stats.basis.rank == 32 and torch.equal(stats.basis.U, torch.eye(32).expand(2, 32, 32))
    assert stats.cov is None and stats.cov_trace.shape == (40, 2)  # the trace alone, for the energy scale
    assert stats.manifest["basis"]["kind"] == "full"
    for norm_kind in ("std", "none"):
        cfg = load_config(None, overrides(folder, cache, *extra, f"lori.step_norm={norm_kind}"))
        student, tok, state, batch, norm = step_batch(cfg, train_set)
        _, parts = lori_method.loss(student, batch, norm, state)
        feed = feed_states(student, batch)[:, 1:]  # [B, L, K, d]: layers 1, 2; one thought per step
        z, t = feed.transpose(1, 2), stats.step_anchor[:6]  # [B, S, L, d] both
        valid = stats.step_valid & stats.valid[:, None]
        err = (z - t) ** 2
        if norm_kind == "std":
            # the teacher's variance across examples per step, layer and width direction (population variance)
            x, m = stats.step_anchor, valid[:, :, None, None].float()
            mean = (x * m).sum(0) / m.sum(0)
            var = (((x - mean) ** 2) * m).sum(0) / m.sum(0)
            err = err / (var + 1e-6)
        by_hand = (err.mean(-1).mean(-1) * valid[:6]).sum() / 6  # mean over width and layers, sum over steps
        torch.testing.assert_close(parts["step_anc"], by_hand, rtol=1e-5, atol=0)


def test_token_target_is_the_lm_heads_cross_entropy_at_the_fed_state_by_hand(teacher, tmp_path):
    folder, train_set = teacher
    extra = ["lori.step_target=token", "lori.cache_steps=false", "lori.second_order=false"]
    cfg = load_config(None, overrides(folder, tmp_path / "cache", *extra))
    quiet_precompute(cfg)
    assert load_cache(tmp_path / "cache").step_anchor is None
    student, tok, state, batch, norm = step_batch(cfg, train_set)
    # the targets are the tokens of each step's value (`<< b = 7 >>` -> `7`)
    for i, ex in enumerate(train_set[:6]):
        assert tok.convert_ids_to_tokens(batch["step_tokens"][i].tolist()) == [s.split()[3] for s in ex.steps]
    _, parts = lori_method.loss(student, batch, norm, state)
    last = feed_states(student, batch)[:, -1]  # [B, K, d]: the last layer, one thought per step
    logits = student.lm.lm_head(last).float()
    by_hand = F.cross_entropy(logits.flatten(0, 1), batch["step_tokens"].flatten(), reduction="sum") / 6
    torch.testing.assert_close(parts["step_anc"], by_hand, rtol=1e-5, atol=0)
    # a stage that replaces one step supervises one token per example
    items = [lori_method.METHOD.render(ex, tok, cfg, 1) | {"index": i} for i, ex in enumerate(train_set[:6])]
    b1 = lori_method.METHOD.collate(items, tok.pad_token_id)
    _, p1 = lori_method.loss(student, b1, norm, state)
    first = feed_states(student, b1)[:, -1, 0]
    torch.testing.assert_close(p1["step_anc"], F.cross_entropy(student.lm.lm_head(first).float(),
                                                               b1["step_tokens"][:, 0], reduction="sum") / 6)


def test_step_value_tokens_skip_a_step_whose_result_is_outside_the_rationale(teacher):
    _, train_set = teacher
    tok = builtin_tokenizer(train_set)
    r = render_teacher(train_set[0], tok, False)
    r.handovers = (r.handovers[0], r.length - 1)  # a second step whose result would be past the rationale
    assert step_value_tokens(r)[1] == IGNORE_INDEX


@pytest.mark.parametrize("extra", [
    ["lori.basis=random", "lori.basis_seed=5"],
    ["lori.basis=full", "lori.cache_cov=false", "lori.second_order=false", "lori.cache_dtype=bfloat16"],
    ["lori.step_norm=none"],
    ["lori.step_target=token", "lori.cache_steps=false"],
], ids=["random", "full-bf16", "norm-none", "token"])
def test_a_tiny_run_trains_end_to_end_with_each_switch(teacher, tmp_path, extra):
    folder, _ = teacher
    args = overrides(folder, tmp_path / "cache", *extra, f"out_dir={tmp_path / 'run'}", "train.steps=4",
                     "train.global_batch=8", "train.micro_batch=4", "train.log_every=2", "train.eval_every=0",
                     "train.save_every=100", "curriculum.steps_per_stage=1", "eval.max_new_tokens=8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        precompute(load_config(None, args))
        final = train(load_config(None, args))
    assert (final / "model.safetensors").is_file()
    assert "MiB" in out.getvalue()  # the precompute summary gives the cache's size
