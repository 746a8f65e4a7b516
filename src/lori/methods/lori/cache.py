"""The teacher-statistics cache: per-example LoRi statistics in the shared subspace, as sharded safetensors::

    manifest.json            fingerprint, options, shard list (only finished shards), sizes and sha256s
    basis.safetensors        the fitted subspace (lori.subspace.Basis.to_dict())
    stats-00000.safetensors  mu, cov (upper triangle, or its trace without lori.cache_cov), anchor, valid; with
                             lori.cache_steps prefix_mu, prefix_valid, step_anchor, step_valid (shapes: docs/methods.md)

Stored in ``lori.cache_dtype``, loaded as float32. Files are written atomically and a shard enters the manifest
only when complete (a precompute resumes at the first missing one); :func:`load_cache` checks every file's sha256
and refuses a stale fingerprint, naming the part.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...errors import LoriError
from ...utils import atomic_target, atomic_write_text, hash_file, sha256_file
from ...subspace.basis import Basis
from ...subspace.stats import triu_unpack

MANIFEST = "manifest.json"
BASIS_FILE = "basis.safetensors"
CACHE_VERSION = 2  # 2: sizes and sha256 of every file in the manifest; 1 had none


def file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        hash_file(h, p)
    return h.hexdigest()


def teacher_digests(ckpt: Path) -> dict[str, str]:
    """Digests of a checkpoint's weights and tokenizer files."""
    weights = sorted(ckpt.glob("*.safetensors"))
    weights = [p for p in weights if p.name != "projector.safetensors"]
    tok = [p for p in ckpt.iterdir() if p.name.startswith("tokenizer") or p.name in ("vocab.json", "merges.txt",
                                                                                     "special_tokens_map.json")]
    if not weights:
        raise LoriError(f"teacher checkpoint {ckpt} has no *.safetensors weights")
    return {"teacher_weights": file_digest(weights), "tokenizer": file_digest(tok)}


def examples_digest(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.to_icot_line().encode())
        h.update(b"\n")
    return h.hexdigest()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_target(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))


@dataclass
class TeacherStats:
    """All cached statistics in memory. ``mu``/``anchor`` [N, L, r]; ``cov`` packed [N, L, r(r+1)/2]."""

    mu: torch.Tensor
    cov: torch.Tensor | None  # None in a cache written with lori.cache_cov=false, which keeps cov_trace
    anchor: torch.Tensor
    valid: torch.Tensor  # [N] bool: examples with at least one rationale position
    basis: Basis
    manifest: dict
    prefix_mu: torch.Tensor | None = None  # [N, S, L, r]: mean over the first k steps in row k-1
    prefix_valid: torch.Tensor | None = None  # [N, S] bool
    step_anchor: torch.Tensor | None = None  # [N, S, L, r]: the teacher's hand-over state of each step
    step_valid: torch.Tensor | None = None  # [N, S] bool
    cov_trace: torch.Tensor | None = None  # [N, L]: the covariance's trace, stored instead of it (cache_cov=false)

    def batch(self, index: torch.Tensor, device) -> dict[str, torch.Tensor]:
        out = {
            "mu": self.mu[index].to(device),
            "anchor": self.anchor[index].to(device),
            "valid": self.valid[index].to(device),
        }
        if self.cov is not None:
            out["cov"] = triu_unpack(self.cov[index].to(device))
        for name in ("prefix_mu", "prefix_valid", "step_anchor", "step_valid"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)[index].to(device)
        return out


class CacheWriter:
    """Writes shards in order; ``done(i)`` says whether shard ``i`` is already complete (resume)."""

    def __init__(self, folder: Path, fingerprint: dict, n_examples: int, shard_size: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        existing = read_manifest(self.folder) if (self.folder / MANIFEST).is_file() else None
        if existing is not None and existing.get("fingerprint") != fingerprint:
            diff = fingerprint_diff(existing.get("fingerprint", {}), fingerprint)
            raise LoriError(f"{self.folder} holds a cache for a different setup ({diff}); "
                            "give another lori.cache_dir or delete that folder")
        if existing is not None and existing.get("version") != CACHE_VERSION:
            # an older layout without checksums: nothing in it can be verified, so every file is written again
            print(f"[lori] {self.folder}: cache version {existing.get('version')} has no checksums; rewriting it as "
                  f"version {CACHE_VERSION}")
            existing = None
        self.manifest = existing or {
            "version": CACHE_VERSION, "fingerprint": fingerprint, "n_examples": n_examples,
            "shard_size": shard_size, "shards": [], "complete": False,
        }
        self.manifest.setdefault("dtype", dtype)

    @property
    def n_shards(self) -> int:
        return -(-self.manifest["n_examples"] // self.manifest["shard_size"])

    def shard_range(self, i: int) -> tuple[int, int]:
        s = self.manifest["shard_size"]
        return i * s, min((i + 1) * s, self.manifest["n_examples"])

    def done(self, i: int) -> bool:
        """Shard ``i`` is in the manifest and its file matches the recorded size and sha256 (a damaged or missing
        shard is written again)."""
        entry = next((sh for sh in self.manifest["shards"] if sh["index"] == i), None)
        return entry is not None and file_problem(self.folder / entry["file"], entry) is None

    def remove_partial_files(self) -> list[Path]:
        """Delete the temporary files (``.NAME.*.tmp``, see lori.utils.atomic_target) a killed precompute left
        behind; they are never read. Only the one process that writes the cache may call this."""
        partial = sorted(p for p in self.folder.iterdir() if p.is_file() and _PARTIAL_FILE.match(p.name))
        for p in partial:
            p.unlink(missing_ok=True)
        return partial

    def has_basis(self) -> bool:
        """Whether the fitted basis is already written; a basis file that fails its checksum is an error (every
        shard was projected on it, so the folder must be deleted)."""
        if "basis" not in self.manifest:
            return False
        check_file(self.folder, BASIS_FILE, self.manifest["basis"])
        return True

    def write_basis(self, basis: Basis, info: dict) -> None:
        path = self.folder / BASIS_FILE
        _atomic_save(basis.to_dict(), path)
        self.manifest["basis"] = {**info, **_file_entry(path)}
        self._flush()

    def write_shard(self, i: int, mu, cov, anchor, valid, prefix_mu=None, prefix_valid=None, step_anchor=None,
                    step_valid=None, cov_trace=None) -> None:
        start, end = self.shard_range(i)
        if mu.shape[0] != end - start:
            raise ValueError(f"shard {i} expects {end - start} examples, got {mu.shape[0]}")
        if (cov is None) == (cov_trace is None):
            raise ValueError("write_shard takes the covariance (cov) or its trace (cov_trace), exactly one")
        stats = {"mu": mu, "cov": cov, "anchor": anchor} if cov is not None else \
            {"mu": mu, "cov_trace": cov_trace, "anchor": anchor}
        masks = {"valid": valid}
        if prefix_mu is not None:
            stats["prefix_mu"], masks["prefix_valid"] = prefix_mu, prefix_valid
        if step_anchor is not None:
            stats["step_anchor"], masks["step_valid"] = step_anchor, step_valid
        tensors = {k: self._stored(k, v) for k, v in stats.items()} | {k: v.to(torch.uint8) for k, v in masks.items()}
        path = self.folder / _shard_name(i)
        _atomic_save(tensors, path)
        self.manifest["shards"] = [sh for sh in self.manifest["shards"] if sh["index"] != i]
        self.manifest["shards"].append({"index": i, "file": _shard_name(i), "start": start, "end": end,
                                        **_file_entry(path)})
        self.manifest["shards"].sort(key=lambda sh: sh["index"])
        self._flush()

    def _stored(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the cache's dtype; a finite value the dtype cannot hold (float16 past 65504) is refused."""
        y = x.detach().float().to(DTYPES[self.dtype])
        if self.dtype != "float32" and bool((torch.isinf(y) & torch.isfinite(x)).any()):
            big = float(x.detach().float().abs().max())
            raise LoriError(f"{self.folder}: the teacher statistic {name!r} reaches {big:.3g}, beyond what "
                            f"lori.cache_dtype={self.dtype} holds; use lori.cache_dtype=bfloat16 (float32's range) "
                            "or float32")
        return y

    def finish(self, extra: dict) -> None:
        self.manifest.update(extra)
        self.manifest["complete"] = len(self.manifest["shards"]) == self.n_shards
        self._flush()

    def _flush(self) -> None:
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1))


_PARTIAL_FILE = re.compile(r"^\.(stats-\d+\.safetensors|basis\.safetensors|manifest\.json)\..*\.tmp$")


def _shard_name(i: int) -> str:
    return f"stats-{i:05d}.safetensors"


def _file_entry(path: Path) -> dict:
    """What the manifest records to check a written file: its size in bytes and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def file_problem(path: Path, entry: dict) -> str | None:
    """Why ``path`` is not the file the manifest ``entry`` recorded (missing, truncated, altered), or None."""
    if "sha256" not in entry or "bytes" not in entry:
        return "no checksum recorded in the manifest"
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        what = "truncated" if size < entry["bytes"] else "longer than written"
        return f"{what} ({size} bytes, {entry['bytes']} written)"
    if sha256_file(path) != entry["sha256"]:
        return f"altered (sha256 differs from the {entry['sha256'][:12]}... recorded when it was written)"
    return None


def check_file(folder: Path, name: str, entry: dict) -> None:
    """Raise a one-line LoriError naming ``folder/name`` when it does not match its manifest ``entry``."""
    problem = file_problem(Path(folder) / name, entry)
    if problem is None:
        return
    path = Path(folder) / name
    if name == BASIS_FILE:
        fix = f"every shard was projected on it: delete {folder} and run `lori precompute` again"
    else:
        fix = (f"run the same `lori precompute` again to rewrite that shard (or delete {folder} and precompute from "
               "scratch)")
    raise LoriError(f"{path}: damaged teacher-statistics cache file: {problem}; {fix}")


def verify_cache(folder: str | Path) -> dict:
    """Check the basis and every listed shard of a cache against the manifest (LoriError naming the first bad
    file); return ``{"files": n, "bytes": total}``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("version") != CACHE_VERSION:
        raise LoriError(f"{folder}: a cache of version {manifest.get('version')} (written by an older lori, without "
                        f"checksums; this one reads version {CACHE_VERSION}); run `lori precompute` again to rewrite "
                        "it, or delete the folder first")
    if "basis" not in manifest:
        raise LoriError(f"{folder}: the manifest lists no basis; delete the folder and run `lori precompute` again")
    entries = [(BASIS_FILE, manifest["basis"])] + [(sh["file"], sh) for sh in manifest.get("shards", [])]
    for name, entry in entries:
        check_file(folder, name, entry)
    return {"files": len(entries), "bytes": sum(int(e["bytes"]) for _, e in entries)}


def _load_checked(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # a file that matched its checksum but safetensors cannot read: still one line
        raise LoriError(f"{path}: cannot read the cache file ({type(e).__name__}: {e}); delete {path.parent} and "
                        "run `lori precompute` again") from None


def read_manifest(folder: Path) -> dict:
    f = Path(folder) / MANIFEST
    if not f.is_file():
        raise LoriError(f"{folder} is not a LoRi cache (no {MANIFEST}); run `lori precompute` first")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LoriError(f"{f}: not valid JSON ({e}); delete the cache folder and run `lori precompute` again") from e


def fingerprint_diff(have: dict, want: dict) -> str:
    keys = sorted(set(have) | set(want))
    diffs = [k for k in keys if have.get(k) != want.get(k)]
    return "differs in: " + ", ".join(f"{k} (cache {have.get(k)!r:.40} vs now {want.get(k)!r:.40})" for k in diffs)


def load_cache(folder: str | Path, expected_fingerprint: dict | None = None) -> TeacherStats:
    """Load a complete cache; refuse it when its fingerprint does not match ``expected_fingerprint`` or a file
    fails its size/sha256 check (:func:`verify_cache`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise LoriError(f"{folder}: the cache is incomplete ({len(manifest.get('shards', []))} shards written); "
                        "run the same `lori precompute` again to finish it")
    if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
        raise LoriError(f"{folder}: refusing a stale teacher-statistics cache: it "
                        f"{fingerprint_diff(manifest['fingerprint'], expected_fingerprint)}. "
                        "Run `lori precompute` with the current teacher, data and options")
    verify_cache(folder)
    parts = [_load_checked(folder / sh["file"]) for sh in manifest["shards"]]
    basis = Basis.from_dict(_load_checked(folder / BASIS_FILE))
    # the statistics as float32 whatever the dtype they are stored in (lori.cache_dtype)
    cat = lambda k: torch.cat([p[k] for p in parts]).float()  # noqa: E731
    opt = lambda k, f=lambda x: x: f(cat(k)) if all(k in p for p in parts) else None  # noqa: E731
    as_bool = lambda x: x.bool()  # noqa: E731
    return TeacherStats(cat("mu"), opt("cov"), cat("anchor"), cat("valid").bool(), basis, manifest,
                        opt("prefix_mu"), opt("prefix_valid", as_bool), opt("step_anchor"), opt("step_valid", as_bool),
                        opt("cov_trace"))


def cache_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("stats-*.safetensors"))
