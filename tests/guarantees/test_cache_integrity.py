"""The teacher-statistics cache checks what it reads: every shard and the basis carry their size and sha256 in the
manifest; a flipped byte, a truncated shard or a missing one is a one-line error naming the file and the fix (never
a raw traceback, never silently different statistics), an intact cache loads exactly what was written, and running
`lori precompute` again rewrites just the damaged shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lori.cli import main
from lori.config import load_config
from lori.data import write_icot
from lori.errors import LoriError
from lori.methods.lori.teacher import precompute
from lori.methods.lori import cache as cache_mod
from lori.subspace.basis import Basis
from lori.methods.lori.cache import CacheWriter, load_cache, verify_cache

L, R, S, SHARD, N = 2, 4, 3, 10, 25  # layers, rank, steps, examples per shard, examples (3 shards)
TRI = R * (R + 1) // 2


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"mu": torch.randn(N, L, R, generator=g), "cov": torch.randn(N, L, TRI, generator=g),
            "anchor": torch.randn(N, L, R, generator=g), "valid": torch.rand(N, generator=g) > 0.1,
            "prefix_mu": torch.randn(N, S, L, R, generator=g), "prefix_valid": torch.rand(N, S, generator=g) > 0.2,
            "step_anchor": torch.randn(N, S, L, R, generator=g), "step_valid": torch.rand(N, S, generator=g) > 0.2}


def _write(folder: Path, t: dict[str, torch.Tensor]) -> CacheWriter:
    w = CacheWriter(folder, {"teacher": "synthetic"}, N, SHARD)
    U = torch.linalg.qr(torch.randn(L, 8, R, generator=torch.Generator().manual_seed(1)))[0]
    w.write_basis(Basis(U, torch.ones(L, 8, dtype=torch.float64), torch.full((L,), 0.9, dtype=torch.float64)),
                  {"rank": R, "layer_rank": None, "energy_captured": [0.9] * L})
    for i in range(w.n_shards):
        a, b = w.shard_range(i)
        w.write_shard(i, *(t[k][a:b] for k in ("mu", "cov", "anchor", "valid")),
                      **{k: t[k][a:b] for k in ("prefix_mu", "prefix_valid", "step_anchor", "step_valid")})
    w.finish({})
    return w


@pytest.fixture
def cache(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    t = _tensors(0)
    _write(tmp_path / "cache", t)
    return tmp_path / "cache", t


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2  # inside the tensor data, past the safetensors header: still a readable file
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_manifest_records_size_and_sha256_of_every_file(cache):
    folder, _ = cache
    m = json.loads((folder / "manifest.json").read_text())
    assert m["version"] == cache_mod.CACHE_VERSION == 2
    from lori.utils import sha256_file

    for entry in [m["basis"], *m["shards"]]:
        name = entry.get("file", "basis.safetensors")
        assert entry["sha256"] == sha256_file(folder / name) and entry["bytes"] == (folder / name).stat().st_size
    assert verify_cache(folder) == {"files": 4, "bytes": sum(e["bytes"] for e in [m["basis"], *m["shards"]])}


def test_intact_cache_loads_exactly_what_was_written(cache):
    folder, t = cache
    stats = load_cache(folder)
    for name, value in t.items():
        got = getattr(stats, name)
        assert torch.equal(got, value.float() if value.dtype != torch.bool else value), name


def test_flipped_bytes_in_a_shard_are_refused_naming_the_shard(cache):
    folder, _ = cache
    _flip(folder / "stats-00001.safetensors")
    with pytest.raises(LoriError) as e:
        load_cache(folder)
    msg = _one_line(e)
    assert f"{folder / 'stats-00001.safetensors'}: damaged teacher-statistics cache file: altered" in msg
    assert "run the same `lori precompute` again" in msg and f"delete {folder}" in msg


def test_truncated_and_missing_shards_give_one_line_errors(cache):
    folder, _ = cache
    shard = folder / "stats-00002.safetensors"
    full = shard.read_bytes()
    shard.write_bytes(full[: len(full) // 3])
    with pytest.raises(LoriError) as e:
        load_cache(folder)
    assert f"{shard}: damaged teacher-statistics cache file: truncated ({len(full) // 3} bytes, {len(full)} " \
           "written)" in _one_line(e)
    shard.unlink()
    with pytest.raises(LoriError) as e:
        load_cache(folder)
    assert f"{shard}: damaged teacher-statistics cache file: missing; run the same `lori precompute`" in _one_line(e)


def test_damaged_basis_is_refused_with_delete_the_folder(cache):
    folder, _ = cache
    _flip(folder / "basis.safetensors", 8)
    with pytest.raises(LoriError) as e:
        load_cache(folder)
    assert f"{folder / 'basis.safetensors'}: damaged" in _one_line(e) and f"delete {folder}" in str(e.value)
    with pytest.raises(LoriError, match="basis.safetensors: damaged"):  # a resumed precompute refuses it too
        CacheWriter(folder, {"teacher": "synthetic"}, N, SHARD).has_basis()


def test_a_damaged_shard_counts_as_not_done_so_precompute_rewrites_it(cache):
    folder, t = cache
    _flip(folder / "stats-00001.safetensors")
    (folder / "stats-00002.safetensors").unlink()
    w = CacheWriter(folder, {"teacher": "synthetic"}, N, SHARD)
    assert [w.done(i) for i in range(3)] == [True, False, False] and w.has_basis()
    _write(folder, t)
    assert torch.equal(load_cache(folder).mu, t["mu"])


def test_a_cache_without_checksums_is_refused_and_rewritten_by_precompute(cache, capsys):
    folder, _ = cache
    m = json.loads((folder / "manifest.json").read_text())
    old = {**m, "version": 1, "basis": {k: v for k, v in m["basis"].items() if k not in ("sha256", "bytes")},
           "shards": [{k: v for k, v in sh.items() if k not in ("sha256", "bytes")} for sh in m["shards"]]}
    (folder / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(LoriError) as e:
        load_cache(folder)
    assert "a cache of version 1" in _one_line(e) and "run `lori precompute` again" in str(e.value)
    w = CacheWriter(folder, {"teacher": "synthetic"}, N, SHARD)
    assert "has no checksums; rewriting it as version 2" in capsys.readouterr().out
    assert w.manifest["shards"] == [] and not w.has_basis() and w.manifest["version"] == 2


# ----------------------------------------------------------------------------- end to end, through the CLI
TINY = [
    "data.digits=[2,2]", "data.train_size=120", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.global_batch=16", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0", "train.eval_size=4",
    "eval.max_new_tokens=8",
]


def test_train_on_a_flipped_shard_is_one_line_and_precompute_again_repairs_it(tmp_path, capsys, monkeypatch,
                                                                             save_random_teacher):
    from lori.data import generate_multiplication

    teacher, data = tmp_path / "teacher", tmp_path / "train.txt"
    examples = generate_multiplication(2, 2, 60, seed=5)
    write_icot(examples, data)
    save_random_teacher(teacher, load_config(None, TINY).model, examples)
    cache = tmp_path / "cache"
    args = ["method=lori", *TINY, f"data.train_file={data}", f"lori.teacher={teacher}", f"lori.cache_dir={cache}",
            "lori.rank=4", "lori.calib_size=40", "lori.shard_size=25", "lori.precompute_batch=16",
            "lori.latent_steps=2"]
    precompute(load_config(None, args))
    good = load_cache(cache)
    _flip(cache / "stats-00001.safetensors")

    capsys.readouterr()
    rc = main(["train", *args, "train.steps=1", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lori: error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"lori: error: {cache / 'stats-00001.safetensors'}: damaged") and "altered" in err

    written, real = [], CacheWriter.write_shard
    monkeypatch.setattr(CacheWriter, "write_shard", lambda self, i, *a, **kw: (written.append(i), real(self, i, *a,
                                                                                                        **kw)))
    precompute(load_config(None, args))
    assert written == [1]  # only the damaged shard is computed again
    again = load_cache(cache)
    for name in ("mu", "cov", "anchor", "prefix_mu", "step_anchor"):
        assert torch.equal(getattr(again, name), getattr(good, name)), name
