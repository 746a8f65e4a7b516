"""The statistics cache in bfloat16 / float16 (`lori.cache_dtype`) and without its per-step statistics
(`lori.cache_steps=false`): what is stored, what it costs in bytes, how far it moves the LoRi loss (bounded here),
and that both options are part of the cache's fingerprint while a default cache keeps the fingerprint it had."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lori.config import load_config
from lori.data.splits import load_split
from lori.errors import ConfigError, LoriError
from lori.methods import METHODS
from lori.methods.lori.teacher import fingerprint
from lori.methods.common import step_norm
from lori.models.build import load_pretrained
from lori.methods.lori.teacher import precompute
from lori.methods.lori.cache import CacheWriter, load_cache

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.digits=[3,3]", "data.train_size=48", "data.valid_size=4", "data.test_size=4"]
STATS = ("mu", "cov", "anchor", "prefix_mu", "step_anchor")
lori_method = METHODS["lori"]  # the method's protocol: render, collate, wrap, setup_training, loss


def cfg_for(teacher, cache, *extra):
    return load_config(None, ["method=lori", *TINY, *DATA, f"lori.teacher={teacher}", f"lori.cache_dir={cache}",
                              "lori.rank=8", "lori.calib_size=48", "lori.precompute_batch=16", "lori.latent_steps=3",
                              *extra])


@pytest.fixture(scope="module")
def caches(tmp_path_factory, save_random_teacher):
    """A random tiny teacher and its cache in each dtype (and one float32 cache without the per-step statistics)."""
    root = tmp_path_factory.mktemp("cache-dtype")
    cfg = load_config(None, ["method=lori", *TINY, *DATA])
    train = load_split(cfg.data, "train")
    save_random_teacher(root / "teacher", cfg.model, train)
    out = {}
    for name, extra in (("float32", []), ("bfloat16", ["lori.cache_dtype=bfloat16"]),
                        ("float16", ["lori.cache_dtype=float16"]), ("nosteps", ["lori.cache_steps=false"])):
        precompute(cfg_for(root / "teacher", root / name, *extra))
        out[name] = root / name
    return root / "teacher", train, out


def shard_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("stats-*.safetensors"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_statistics_are_stored_in_the_dtype_and_loaded_as_float32(caches, dtype):
    _, _, folders = caches
    shard = next(folders[dtype].glob("stats-*.safetensors"))
    with safe_open(str(shard), "pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {stored[k] for k in STATS} == {"BF16" if dtype == "bfloat16" else "F16"}
    assert stored["valid"] == "U8"
    ref, low = load_cache(folders["float32"]), load_cache(folders[dtype])
    assert low.manifest["dtype"] == dtype and ref.manifest["dtype"] == "float32"
    # half the bytes per statistic: the shards shrink to about half (headers and uint8 masks do not)
    assert 0.45 < shard_bytes(folders[dtype]) / shard_bytes(folders["float32"]) < 0.6
    assert low.manifest["raw_trajectory_bytes"] == ref.manifest["raw_trajectory_bytes"]
    assert low.manifest["cache_bytes"] == shard_bytes(folders[dtype])
    # each statistic is the float32 one rounded to nearest: relative error <= 2^-(mantissa bits + 1), and for
    # float16's subnormals (below 2^-14) an absolute error <= half their spacing 2^-24
    rel, tiny = (2.0**-8, 1e-30) if dtype == "bfloat16" else (2.0**-11, 2.0**-25)
    for k in STATS:
        a, b = getattr(ref, k), getattr(low, k)
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert bool(((b - a).abs() <= rel * a.abs() + tiny).all()), k
        assert not torch.equal(a, b), k  # really rounded: the test would notice a cache left in float32
    torch.testing.assert_close(low.basis.U, ref.basis.U, rtol=0, atol=0)  # the basis stays float32


def lori_loss(teacher, train, cache, *extra):
    """The LoRi loss (all terms) of a student started from the teacher, on the first 16 training examples."""
    cfg = cfg_for(teacher, cache, *extra)
    lm, tok = load_pretrained(teacher)
    torch.manual_seed(0)
    student = lori_method.wrap(lm, tok, cfg)
    state = lori_method.setup_training(student, cfg, train)
    items = [lori_method.render(ex, tok, cfg, cfg.curriculum.stages + 1) | {"index": i}
             for i, ex in enumerate(train[:16])]
    batch = lori_method.collate(items, tok.pad_token_id)
    with torch.no_grad():
        total, parts = lori_method.loss(student, batch, step_norm(items, list(range(16))), state)
    return float(total), {k: float(v) for k, v in parts.items()}


@pytest.mark.parametrize("dtype,bound", [("bfloat16", 3e-3), ("float16", 5e-4)])
def test_a_low_precision_cache_moves_the_loss_by_less_than_a_bound(caches, dtype, bound):
    """Every LoRi term (mean, covariance, anchor, step anchors) and the total, against the float32 cache: the relative
    change is below 0.3% for bfloat16 and 0.05% for float16 (measured here: at most 5e-4 and 7.5e-5, the anchor).
    Near convergence (student ~ teacher) a term is small and the same absolute change is a larger share of it: the
    floor is the rounding itself, about (2^-9)^2 of the teacher's energy for bfloat16."""
    teacher, train, folders = caches
    extra = ["lori.step_anchors=true"]
    ref_total, ref = lori_loss(teacher, train, folders["float32"], *extra)
    total, parts = lori_loss(teacher, train, folders[dtype], f"lori.cache_dtype={dtype}", *extra)
    assert set(parts) == set(ref) >= {"ce", "rat_mean", "rat_cov", "anc", "step_anc"}
    assert parts["ce"] == ref["ce"]  # the task loss never reads the cache
    for k in ("rat_mean", "rat_cov", "anc"):
        assert ref[k] > 0 and abs(parts[k] - ref[k]) <= bound * ref[k], (k, parts[k], ref[k])
    # The step anchors are standardised by the teacher's spread across examples: this random teacher's state at a
    # hand-over token (`+`, `(`) barely varies next to its size, so rounding weighs more in those units (0.32%).
    assert ref["step_anc"] > 0 and abs(parts["step_anc"] - ref["step_anc"]) <= 4 * bound * ref["step_anc"]
    assert abs(total - ref_total) <= 4 * bound * ref_total
    assert total != ref_total  # the statistics did change


def test_cache_dtype_and_cache_steps_are_in_the_fingerprint_and_the_default_fingerprint_is_unchanged(caches):
    teacher, train, folders = caches
    fp = lambda *extra: fingerprint(cfg_for(teacher, "x", *extra), teacher, train, 2)  # noqa: E731
    default = fp()
    assert "cache_dtype" not in default and "cache_steps" not in default  # caches written before keep theirs
    assert fp("lori.cache_dtype=bfloat16") == default | {"cache_dtype": "bfloat16"}
    assert fp("lori.cache_steps=false") == default | {"cache_steps": False}
    lm, tok = load_pretrained(teacher)
    student = lori_method.wrap(lm, tok, cfg_for(teacher, folders["float32"]))
    with pytest.raises(LoriError, match="cache_dtype"):  # a bfloat16 config does not train on a float32 cache
        lori_method.setup_training(student, cfg_for(teacher, folders["float32"], "lori.cache_dtype=bfloat16"), train)
    with pytest.raises(LoriError, match="cache_dtype"):  # nor the other way round
        lori_method.setup_training(student, cfg_for(teacher, folders["bfloat16"]), train)
    with pytest.raises(LoriError, match="different setup"):  # precompute into a cache of another dtype
        precompute(cfg_for(teacher, folders["float32"], "lori.cache_dtype=float16"))


def test_without_per_step_statistics_the_cache_is_smaller_and_a_config_reading_them_is_refused(caches):
    teacher, train, folders = caches
    stats = load_cache(folders["nosteps"])
    assert stats.prefix_mu is None and stats.step_anchor is None and stats.step_valid is None
    ref = load_cache(folders["float32"])
    for k in ("mu", "cov", "anchor"):
        assert torch.equal(getattr(stats, k), getattr(ref, k))  # the same basis, the same statistics
    assert shard_bytes(folders["nosteps"]) < 0.8 * shard_bytes(folders["float32"])
    with pytest.raises(ConfigError, match="lori.cache_steps=false .* lori.step_anchors"):
        cfg_for(teacher, folders["nosteps"], "lori.cache_steps=false", "lori.step_anchors=true")
    with pytest.raises(ConfigError, match="lori.prefix_statistics"):
        cfg_for(teacher, folders["nosteps"], "lori.cache_steps=false", "lori.prefix_statistics=true")
    # the default loss (no per-step terms) trains on it, with the same value as on the full cache
    assert lori_loss(teacher, train, folders["nosteps"], "lori.cache_steps=false") == lori_loss(
        teacher, train, folders["float32"])


def test_float16_overflow_is_refused_naming_the_statistic(tmp_path):
    w = CacheWriter(tmp_path / "c", {"t": 1}, 2, 2, dtype="float16")
    mu = torch.tensor([[[1.0, 7e4]], [[0.5, 2.0]]])  # 70,000 > float16's 65,504
    with pytest.raises(LoriError, match="'mu' reaches 7e\\+04.*cache_dtype=bfloat16"):
        w.write_shard(0, mu, torch.zeros(2, 1, 3), torch.zeros(2, 1, 2), torch.ones(2, dtype=torch.bool))
    assert not list((tmp_path / "c").glob("stats-*"))
    with pytest.raises(ValueError, match="float8"):
        CacheWriter(tmp_path / "d", {"t": 1}, 2, 2, dtype="float8")


def test_cache_dtype_is_validated_by_the_config():
    with pytest.raises(ConfigError, match="cache_dtype"):
        load_config(None, ["method=lori", "lori.cache_dtype=int8"])
