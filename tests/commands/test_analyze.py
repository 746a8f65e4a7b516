"""`lori analyze`: exact spectrum numbers on synthetic tensors of known rank, and the command end to end."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from lori.analysis.measure import TrajectoryAccumulator, ordinary_vocabulary, randomize_rationale, shuffle_rationale
from lori.cli import main
from lori.config import load_config, save_config
from lori.data.splits import load_split
from lori.models.build import tiny_model
from lori.models.latent_student import PROJECTOR_FILE
from lori.methods.lori.teacher import render_teacher
from lori.subspace import SecondMomentAccumulator, fit_bases
from lori.subspace.spectrum import (
    chance_mean_cos2,
    cumulative_energy,
    effective_rank_entropy,
    energy_at_rank,
    gram_singular_values,
    mode_gram,
    mode_spectra,
    participation_ratio,
    principal_cosines,
    rank_for_energy,
    spectrum_summary,
)
from lori.training.checkpoint import CONFIG_FILE
from lori.models.loading import builtin_tokenizer


def _orthonormal(d, r, g):
    return torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]


def _tucker(shape, ranks, g):
    """A tensor of exact multilinear ranks ``ranks``: a random core times orthonormal factors."""
    core = torch.randn(*ranks, generator=g, dtype=torch.float64)
    x = core
    for mode, (n, r) in enumerate(zip(shape, ranks)):
        U = _orthonormal(n, r, g)
        x = torch.movedim(torch.tensordot(U, torch.movedim(x, mode, 0), dims=([1], [0])), 0, mode)
    return x


def _unfold(x, mode):
    return torch.movedim(x, mode, 0).reshape(x.shape[mode], -1)


# ------------------------------------------------------------------------------------------------ pure numbers


@pytest.mark.parametrize("k,d", [(1, 8), (3, 10), (7, 7)])
def test_flat_rank_k_spectrum_has_effective_rank_k(k, d):
    s = torch.tensor([2.5] * k + [0.0] * (d - k))
    assert participation_ratio(s) == pytest.approx(k, rel=1e-12)
    assert effective_rank_entropy(s) == pytest.approx(k, rel=1e-12)
    for e in (0.5, 0.9, 0.999, 1.0):
        assert rank_for_energy(s, e) == math.ceil(e * k - 1e-9)
    assert energy_at_rank(s, k) == pytest.approx(1.0)


def test_non_flat_spectrum_numbers():
    s = torch.tensor([2.0, 1.0, 1.0, 0.0])  # energies 4, 1, 1, 0
    lam = torch.tensor([4.0, 1.0, 1.0])
    p = lam / lam.sum()
    assert effective_rank_entropy(s) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert participation_ratio(s) == pytest.approx(36 / 18)
    assert participation_ratio(s) <= effective_rank_entropy(s) <= 3
    assert cumulative_energy(s).tolist() == pytest.approx([4 / 6, 5 / 6, 1.0, 1.0])
    assert rank_for_energy(s, 0.8) == 2 and rank_for_energy(s, 0.6) == 1 and rank_for_energy(s, 0.9) == 3
    assert energy_at_rank(s, 1) == pytest.approx(4 / 6) and energy_at_rank(s, 10) == pytest.approx(1.0)
    summary = spectrum_summary(torch.tensor([1.0, 2.0, 1.0, 0.0]), rank=2)  # unsorted input is sorted
    assert summary["singular_values"] == [2.0, 1.0, 1.0, 0.0] and summary["energy_at_rank"] == pytest.approx(5 / 6)
    assert summary["rank_for_energy"] == {"0.8": 2, "0.9": 3, "0.95": 3, "0.99": 3}
    zero = torch.zeros(5)
    assert (effective_rank_entropy(zero), participation_ratio(zero), rank_for_energy(zero, 0.9)) == (0.0, 0.0, 1)


@pytest.mark.parametrize("ranks", [(2, 3, 5), (1, 3, 3), (4, 6, 9)])
def test_mode_ranks_of_a_known_tucker_tensor_are_exact(ranks):
    g = torch.Generator().manual_seed(sum(ranks))
    x = _tucker((4, 6, 16), ranks, g)
    for s, r in zip(mode_spectra(x), ranks):
        assert rank_for_energy(s, 0.99999) == r
        assert rank_for_energy(s, 1.0) == r
        assert energy_at_rank(s, r) == pytest.approx(1.0, abs=1e-12)
        if r > 1:
            assert energy_at_rank(s, r - 1) < 0.999


def test_mode_spectra_and_energies_match_a_direct_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 7, 11, generator=g, dtype=torch.float64)  # [problems, layers, positions, hidden]
    spectra = mode_spectra(x, batch_dims=1)
    for mode, s in enumerate(spectra):
        unfolding = torch.movedim(x, mode + 1, 0).reshape(x.shape[mode + 1], -1)  # problems are columns
        ref = torch.linalg.svd(unfolding, full_matrices=False).S
        torch.testing.assert_close(s, ref, rtol=1e-10, atol=1e-10)
        lam = ref**2
        for k in range(1, len(ref) + 1):
            assert energy_at_rank(s, k) == pytest.approx(float(lam[:k].sum() / lam.sum()), rel=1e-10)
        for e in (0.8, 0.9, 0.95, 0.99):
            frac = lam.cumsum(0) / lam.sum()
            assert rank_for_energy(s, e) == int((frac < e).sum()) + 1
    # mode Grams of batches along the problem axis add up to the Gram of the whole
    whole = mode_gram(x, 2, batch_dims=1)
    parts = mode_gram(x[:2], 2, batch_dims=1) + mode_gram(x[2:], 2, batch_dims=1)
    torch.testing.assert_close(whole, parts)
    torch.testing.assert_close(gram_singular_values(whole), torch.linalg.svdvals(_unfold(x, 3)))


def test_per_layer_spectra_of_low_rank_trajectories_agree_with_fit_bases():
    """Hidden states of exact rank k per layer: the accumulator finds rank k, and its energy at r is the basis'
    energy_captured."""
    g = torch.Generator().manual_seed(1)
    B, L, T, d, k = 6, 3, 9, 16, 4
    Q = torch.stack([_orthonormal(d, k, g) for _ in range(L)])
    h = torch.einsum("bltr,ldr->bltd", torch.randn(B, L, T, k, generator=g, dtype=torch.float64), Q).float()
    mask = torch.arange(T)[None] < torch.tensor([9, 7, 9, 5, 8, 9])[:, None]
    acc = TrajectoryAccumulator(L, d, positions=5)
    acc.update(h[:3], mask[:3])
    acc.update(h[3:], mask[3:])
    res = acc.result("synthetic", rank=2, layer_rank=None, layers=[1, 2, 3])
    ref = SecondMomentAccumulator(L, d)
    ref.update(h, mask)
    basis = fit_bases(ref, rank=2)
    for i, row in enumerate(res["layers"]):
        assert row["uncentred"]["rank_for_energy"]["0.99"] <= k and rank_for_energy(
            torch.tensor(row["uncentred"]["singular_values"]), 0.99999) == k
        assert row["uncentred"]["energy_at_rank"] == pytest.approx(float(basis.energy_captured[i]), rel=1e-5)
    assert res["n_positions"] == int(mask.sum()) and res["modes"]["n_examples"] == 6
    assert rank_for_energy(torch.tensor(res["modes"]["hidden"]["singular_values"]), 0.99999) <= L * k
    assert res["modes"]["position"]["dim"] == 5 and res["modes"]["layer"]["dim"] == 3


def test_principal_cosines():
    g = torch.Generator().manual_seed(2)
    Q = _orthonormal(10, 4, g)
    assert principal_cosines(Q, Q @ _orthonormal(4, 4, g)).tolist() == pytest.approx([1.0] * 4)
    theta = 0.3
    e = torch.eye(10, dtype=torch.float64)
    U = e[:, :2]
    V = torch.stack([math.cos(theta) * e[:, 0] + math.sin(theta) * e[:, 5], e[:, 6]], dim=1)
    assert principal_cosines(U, V).tolist() == pytest.approx([math.cos(theta), 0.0], abs=1e-12)
    assert chance_mean_cos2(4, 16) == 0.25


# ------------------------------------------------------------------------------------------------ controls

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.digits=[2,2]", "data.train_size=40", "data.valid_size=10", "data.test_size=10"]


def test_controls_keep_everything_but_the_rationale():
    cfg = load_config(None, DATA)
    train = load_split(cfg.data, "train")
    tok = builtin_tokenizer(train)
    item = render_teacher(train[0], tok, False)
    rng = random.Random(0)
    vocab = ordinary_vocabulary(tok)
    assert not set(vocab) & set(tok.all_special_ids)
    for new in (shuffle_rationale(item, rng), randomize_rationale(item, rng, vocab)):
        a, b = item.start, item.start + item.length
        assert (new.start, new.length, new.anchor) == (item.start, item.length, item.anchor)
        assert new.input_ids[:a] == item.input_ids[:a] and new.input_ids[b:] == item.input_ids[b:]
    shuffled = shuffle_rationale(item, random.Random(1))
    assert sorted(shuffled.input_ids[a:b]) == sorted(item.input_ids[a:b])
    assert all(t in vocab for t in randomize_rationale(item, rng, vocab).input_ids[a:b])


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random tiny teacher and a LoRi student made from it, each saved like a `lori train` checkpoint."""
    root = tmp_path_factory.mktemp("analyze")
    tcfg = load_config(None, ["method=cot-sft", *TINY, *DATA])
    tok = builtin_tokenizer(load_split(tcfg.data, "train"))
    torch.manual_seed(0)
    lm = tiny_model(tcfg.model, tok, max_positions=128)
    teacher = root / "teacher"
    lm.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    save_config(tcfg, teacher / CONFIG_FILE)

    from safetensors.torch import save_file

    from lori.methods.lori import method as lori_method
    from lori.models.build import load_pretrained

    scfg = load_config(None, ["method=lori", *TINY, *DATA, f"lori.teacher={teacher}", "lori.rank=4",
                              "lori.latent_steps=3"])
    slm, stok = load_pretrained(teacher)
    student = lori_method.METHOD.wrap(slm, stok, scfg)
    folder = root / "student"
    student.lm.save_pretrained(folder)
    stok.save_pretrained(folder)
    save_config(scfg, folder / CONFIG_FILE)
    save_file({k: v.contiguous() for k, v in student.projector.state_dict().items()}, str(folder / PROJECTOR_FILE))
    return teacher, folder


def test_lori_analyze_end_to_end(checkpoints, tmp_path, capsys):
    teacher, student = checkpoints
    out = tmp_path / "analysis"
    rc = main(["analyze", str(teacher), "--student", str(student), "--n", "12", "--out", str(out),
               "--batch-size", "6", "--probe-examples", "2", "--seed", "1", "lori.layers=[1,2]"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "analysis.json").read_text())
    assert {"teacher", "student", "layers", "rank", "hidden_size", "rationale_length", "conditions",
            "student_analysis", "figures", "conventions"} <= set(res)
    assert res["rank"] == 4 and res["layers"] == [1, 2] and res["n_problems"] == 12
    assert set(res["conditions"]) == {"teacher", "random_weights", "shuffled", "random_tokens", "student"}
    for name, cond in res["conditions"].items():
        assert len(cond["layers"]) == 2
        for row in cond["layers"]:
            u = row["uncentred"]
            assert {"effective_rank_entropy", "participation_ratio", "rank_for_energy", "energy_at_rank",
                    "singular_values", "cumulative_energy"} <= set(u)
            assert set(u["rank_for_energy"]) == {"0.8", "0.9", "0.95", "0.99"} and 0 < u["energy_at_rank"] <= 1
            assert len(u["singular_values"]) == 32 and 1 <= u["participation_ratio"] <= u["effective_rank_entropy"]
        assert set(cond["modes"]) >= {"layer", "position", "hidden"}
        assert cond["modes"]["layer"]["dim"] == 2 and cond["modes"]["hidden"]["dim"] == 32
    spectrum = {n: c["layers"][1]["uncentred"]["singular_values"] for n, c in res["conditions"].items()}
    assert len(set(map(tuple, spectrum.values()))) == 5  # every control differs from the teacher
    T = res["rationale_length"]["common_positions"]
    assert res["conditions"]["teacher"]["modes"]["position"]["dim"] == T >= 1
    assert res["conditions"]["student"]["modes"]["position"]["dim"] == 3
    st = res["student_analysis"]
    assert [row["layer"] for row in st["overlap"]] == [1, 2]
    for row in st["overlap"]:
        assert len(row["principal_cosines"]) == 4 and all(0 <= c <= 1 for c in row["principal_cosines"])
        assert row["mean_cos2"] == pytest.approx(sum(c * c for c in row["principal_cosines"]) / 4, abs=1e-5)
        assert row["chance_mean_cos2"] == pytest.approx(4 / 32)
    assert len(st["probe"]) == 2 and len(st["probe"][0]["steps"]) == 3
    top = st["probe"][0]["steps"][0]["top"]
    assert len(top) == 5 and all(isinstance(t, str) and 0 <= p <= 1 for t, p in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    report = (out / "report.md").read_text()
    assert set(res["figures"]) == {"spectra", "energy", "modes", "ranks", "overlap"}
    for fig in res["figures"].values():
        data = (out / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({fig})" in report
    assert "| layer | condition |" in report and "What the latent steps say" in report


def test_lori_analyze_teacher_only_and_bad_override(checkpoints, tmp_path, capsys):
    teacher, _ = checkpoints
    out = tmp_path / "a"
    assert main(["analyze", str(teacher), "--n", "5", "--out", str(out), "lori.rank=3", "--data-split", "valid"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert res["student_analysis"] is None and res["rank"] == 3 and res["split"] == "valid"
    assert "overlap" not in res["figures"] and (out / "report.md").is_file()
    capsys.readouterr()
    assert main(["analyze", str(teacher), "--n", "5", "--out", str(out), "train.lr=0.1"]) == 2
    assert "data.* and lori.*" in capsys.readouterr().err


def test_analyze_takes_any_latent_student_and_refuses_an_explicit_one(checkpoints, tmp_path, capsys):
    """The student is read through its method's Thoughts (K, projector), so a Coconut student is analysed like a
    LoRi one; an explicit-CoT checkpoint (no latent steps) is refused in one line."""
    teacher, _ = checkpoints
    from lori.methods import METHODS
    from lori.models.build import load_pretrained

    ccfg = load_config(None, ["method=coconut", *TINY, *DATA, "coconut.latent_steps=2"])
    lm, tok = load_pretrained(teacher)
    coconut = METHODS["coconut"].wrap(lm, tok, ccfg)  # identity projector: nothing beside the weights
    folder = tmp_path / "coconut"
    coconut.lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    save_config(ccfg, folder / CONFIG_FILE)
    out = tmp_path / "a"
    assert main(["analyze", str(teacher), "--student", str(folder), "--n", "6", "--out", str(out),
                 "--probe-examples", "1"]) == 0, capsys.readouterr().err
    res = json.loads((out / "analysis.json").read_text())
    assert (res["student_analysis"]["latent_steps"], res["student_analysis"]["projector"]) == (2, "identity")
    capsys.readouterr()
    assert main(["analyze", str(teacher), "--student", str(teacher), "--n", "5", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "latent student" in err and "cot-sft" in err and len(err.strip().splitlines()) == 1
