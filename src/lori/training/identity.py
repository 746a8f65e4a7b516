"""Run identity and the output-folder lock: what makes a run folder's checkpoints belong to a config.

Every run folder records ``run_identity.json``: its resolved config (flattened to dotted keys) with the inputs
located by a path replaced by a digest of their content, and the run's ``run_id`` (:func:`new_run_id`, the id of its
tracker runs). A folder is reused (``lori demo`` / ``lori compare`` skip a finished run, ``lori train`` resumes)
only when its identity matches the config's; otherwise the run is refused with the keys that differ. Keys that never
change a step's weights (:data:`FREE_KEYS`, the ``eval`` section, ``train.steps`` under the constant schedule) may
differ on resume; the paths of digested inputs and ``lori.cache_dir`` may move.

The lock (:func:`run_lock`) is ``OUT/.lock`` holding the pid, host and start time of the one process writing the
folder; a lock left by a process that is gone (same host, pid not running) is taken over with a message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..config import Config, to_dict
from ..errors import DataError, LoriError
from ..methods import METHODS
from ..models.checkpoint_folders import checkpoint_dir, resolve_checkpoint
from ..utils import atomic_write_text, sha256_file

IDENTITY_FILE = "run_identity.json"
LOCK_FILE = ".lock"
IDENTITY_VERSION = 1

# Keys that never change the weights of a step: logging, validation, checkpoint keeping, where the run stops and
# lives. They may differ between a run folder and the config that resumes or reuses it.
FREE_KEYS = ("out_dir", "train.resume", "train.stop_at", "train.log_every", "train.eval_every", "train.eval_size",
             "train.save_every", "train.keep_checkpoints", "train.keep_best", "train.tensorboard", "train.log_with")
FREE_SECTIONS = ("eval.",)
# Located by path, identified by content: the digest is compared, the path may move.
PATH_ONLY = ("lori.cache_dir",)
_HEAD = 1 << 20  # bytes hashed at each end of a large weights file


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _weights_digest(folder: Path) -> str:
    """A cheap digest of a model folder: every weights and tokenizer file's name, size and content (files over
    2 MiB: their first and last MiB)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.suffix == ".bin"
                                                                   or p.name.startswith("tokenizer")))
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 2 * _HEAD:
                h.update(f.read())
            else:
                h.update(f.read(_HEAD))
                f.seek(size - _HEAD)
                h.update(f.read(_HEAD))
    return h.hexdigest()


def _input(path: str | None, kind: str, field: str) -> dict | None:
    if path is None:
        return None
    if kind == "file":
        p = Path(path)
        if not p.is_file():
            raise DataError(p, None, "not a regular file" if p.exists() else "file does not exist",
                            f"{field} names it: check the path; data files are never downloaded silently")
        return {"path": str(path), "digest": sha256_file(p)}
    return {"path": str(path), "digest": _weights_digest(resolve_checkpoint(path, field))}


def run_identity(cfg: Config) -> dict[str, Any]:
    """The dotted config keys of ``cfg`` with each input path replaced by ``{"path", "digest"}``."""
    flat = _flatten(to_dict(cfg))
    for split in ("train", "valid", "test"):
        flat[f"data.{split}_file"] = _input(flat[f"data.{split}_file"], "file", f"data.{split}_file")
    flat["model.init_from"] = _input(flat["model.init_from"], "checkpoint", "model.init_from")
    if Path(cfg.model.name).is_dir():
        flat["model.name"] = _input(cfg.model.name, "checkpoint", "model.name")
    if METHODS[cfg.method].teacher_cache and cfg.lori.teacher is not None:
        flat["lori.teacher"] = _input(cfg.lori.teacher, "checkpoint", "lori.teacher")
    return flat


def _free(key: str, old: dict, new: dict) -> bool:
    if key in FREE_KEYS or key in PATH_ONLY or key.startswith(FREE_SECTIONS):
        return True
    return key == "train.steps" and old.get("train.schedule") == new.get("train.schedule") == "constant"


# each method's own config section, read by that method alone
_OWN_SECTIONS = {"lori.": "lori", "codi.": "codi", "coconut.": "coconut", "aux_sum.": "aux-sum"}


def _unread(key: str, identity: dict) -> bool:
    owner = next((m for prefix, m in _OWN_SECTIONS.items() if key.startswith(prefix)), None)
    return owner is not None and identity.get("method") != owner


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and "digest" in a and "digest" in b:
        return a["digest"] == b["digest"]
    return a == b


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return _flatten(to_dict(Config()))


def differences(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the dotted keys whose values differ and change the run, and those that may differ.

    A key the old identity lacks (added to the config since) counts as its default there; a key only the old one
    has (since removed) no longer means anything; a key of another method's own section (``lori.rank`` of a No-CoT
    run, which ``lori demo ... student.lori.rank=4`` also sets) does not change the run."""
    refused, allowed = [], []
    for key in sorted(new):
        a, b = old[key] if key in old else _defaults().get(key), new[key]
        if _same(a, b) or _unread(key, new):
            continue
        (allowed if _free(key, old, new) else refused).append(key)
    return refused, allowed


def show(value: Any) -> str:
    if isinstance(value, dict) and "digest" in value:
        return f"{value['path']} (content {value['digest'][:12]})"
    return json.dumps(value)


def describe(keys: list[str], old: dict, new: dict, limit: int = 5) -> str:
    """``key: old -> new`` for the first ``limit`` keys, then how many more."""
    shown = "; ".join(f"{k}: {show(old.get(k))} -> {show(new.get(k))}" for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def read_identity(run_dir: Path) -> dict | None:
    """The recorded identity of a run folder, or None for a folder without one (written by an older lori)."""
    f = Path(run_dir) / IDENTITY_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        return data["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LoriError(f"{f} is damaged; delete the run folder {run_dir} (or use a new out_dir)") from None


def write_identity(run_dir: Path, identity: dict, run_id: str | None = None) -> None:
    record: dict[str, Any] = {"version": IDENTITY_VERSION, "config": identity}
    if run_id is not None:
        record["run_id"] = run_id
    atomic_write_text(Path(run_dir) / IDENTITY_FILE, json.dumps(record, indent=1) + "\n")


def read_run_id(run_dir: Path) -> str | None:
    """The ``run_id`` recorded in a run folder's identity (None: none recorded, or no identity)."""
    try:
        run_id = json.loads((Path(run_dir) / IDENTITY_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def new_run_id(identity: dict) -> str:
    """A fresh run's id (the experiment trackers' run, lori.training.trackers): the digest of the identity's keys
    that change the weights, then the start time, so a run started over (``train.resume=never``) gets a new one."""
    fixed = {k: v for k, v in identity.items() if not _free(k, identity, identity)}
    digest = hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()
    return f"{digest[:12]}-{time.strftime('%Y%m%d%H%M%S')}{time.time_ns() % 1_000_000_000:09d}"


def run_dir_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint ``RUN/checkpoints/step-N`` (a bare checkpoint folder: itself)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == checkpoint_dir(Path()).name else ckpt


def check_reuse(cfg: Config, run_dir: Path, fix: str, identity: dict | None = None) -> tuple[dict, list[str]]:
    """Refuse to continue or reuse the run in ``run_dir`` with ``cfg`` when a key that changes the run differs.

    Returns ``(old identity, allowed changed keys)``; ``old`` is None for a folder without a recorded identity (a
    warning is printed: it cannot be checked). ``fix`` says what to do instead, for the error message."""
    new = run_identity(cfg) if identity is None else identity
    old = read_identity(run_dir)
    if old is None:
        print(f"[lori] {run_dir}: no {IDENTITY_FILE} (a run from an older lori); its settings and inputs cannot be "
              "checked against this config", flush=True)
        return None, []
    refused, allowed = differences(old, new)
    if refused:
        raise LoriError(f"{run_dir} was trained with other settings or inputs ({describe(refused, old, new)}); "
                        f"{fix}")
    return old, allowed


# Changes of these keys are expected between invocations and not printed on resume.
_QUIET = ("out_dir", "train.resume", "train.stop_at")


def start_run(cfg: Config, out_dir: Path, resume_from: Path | None) -> str:
    """Before a run trains into ``out_dir`` (main process): check the identity of the run it resumes, print the
    allowed changes it applies, or clear what an earlier run left (``train.resume=never``; with ``auto`` and no
    checkpoint, the metrics of a run killed before its first checkpoint); then record this run's identity. Returns
    the run's id: the one recorded in ``out_dir`` when the run resumes a checkpoint of that folder, else a new one
    (:func:`new_run_id`)."""
    out_dir = Path(out_dir)
    identity = run_identity(cfg)
    run_id = None
    if resume_from is None:
        if cfg.train.resume == "never":
            removed = clear_run(out_dir)
            if removed:
                print(f"[lori] train.resume=never: removed the earlier run's {', '.join(removed)} in {out_dir}",
                      flush=True)
        else:
            truncate_metrics(out_dir / "metrics.jsonl", 0)
    else:
        run = run_dir_of(resume_from)
        fix = ("start it over with train.resume=never (deletes its checkpoints and metrics) or use a new out_dir"
               if run.resolve() == out_dir.resolve() else
               f"set those keys back to resume from {resume_from}, or train from scratch with train.resume=never")
        old, allowed = check_reuse(cfg, run, fix, identity)
        for key in allowed:
            if key not in _QUIET:
                print(f"[lori] resume: applying changed {key} {show(old.get(key))} -> {show(identity.get(key))}",
                      flush=True)
        if run.resolve() == out_dir.resolve():
            run_id = read_run_id(out_dir)
    run_id = run_id or new_run_id(identity)
    write_identity(out_dir, identity, run_id)
    return run_id


def clear_run(run_dir: Path) -> list[str]:
    """Delete an earlier run's checkpoints, metrics, TensorBoard events (``OUT/tensorboard``: the local files of the
    trackers, lori.training.trackers), evaluations (``OUT/eval-*``: their rows describe the deleted weights) and
    identity (``train.resume=never``)."""
    removed = []
    evaluations = sorted(p.name for p in Path(run_dir).glob("eval-*") if p.is_dir())
    for name in (checkpoint_dir(Path()).name, "metrics.jsonl", "tensorboard", *evaluations, IDENTITY_FILE):
        p = Path(run_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resumed run writes the later ones again); a line
    that is not JSON (cut by a kill) is dropped too. Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


# ------------------------------------------------------------------------------------------------ lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# Run folders this process created when it took their lock: release_lock removes them again when the run left
# nothing in them (it stopped before training, e.g. on bad input).
_CREATED: set[Path] = set()


def acquire_lock(run_dir: Path, field: str = "out_dir") -> Path:
    """Take ``run_dir/.lock`` for this process or raise :class:`LoriError` naming the process that holds it.

    The first write of a run, so an out_dir that cannot be written (no permission, a read-only file system, a full
    disk, a path under a file) is refused here, before any work, naming the folder. ``field``: the setting that
    names the folder (``lori.cache_dir`` for ``lori precompute``)."""
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = run_dir / f".lock.{me['pid']}.tmp"
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(me) + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise LoriError(f"{field} {run_dir} cannot be written ({e.strerror or e}); choose a writable {field}") \
            from None
    if created:
        _CREATED.add(run_dir.resolve())
    try:
        for attempt in range(2):
            try:
                os.link(tmp, lock)  # atomic and exclusive: the lock appears with its content or not at all
                return lock
            except FileExistsError:
                pass
            try:
                held = json.loads(lock.read_text())
                pid, host = int(held["pid"]), str(held["host"])
            except FileNotFoundError:
                continue  # released meanwhile
            except (ValueError, KeyError, TypeError):
                held, pid, host = None, None, None
            if held is not None and (host != me["host"] or _alive(pid)):
                where = "" if host == me["host"] else f" on host {host}"
                raise LoriError(f"{run_dir} is in use by another lori run (pid {pid}{where}, started "
                                f"{held.get('started', '?')}); wait for it to finish or use a new {field} (if no "
                                f"run is using the folder, delete {lock})")
            if attempt == 1:
                break
            what = "a damaged lock" if held is None else f"the lock of pid {pid}, which is no longer running"
            print(f"[lori] {run_dir}: taking over {what}", flush=True)
            lock.unlink(missing_ok=True)
        raise LoriError(f"{run_dir}: could not take {lock}; another run may have taken it just now")
    finally:
        tmp.unlink(missing_ok=True)


def release_lock(lock: Path) -> None:
    """Remove the lock if this process holds it. A run that stopped before it trained (no checkpoint and no logged
    step: bad input found after the lock was taken) leaves nothing: the files it wrote first (``config.yaml``,
    ``run_identity.json``, an empty ``metrics.jsonl``) are removed, and the folder too when taking the lock created
    it."""
    lock = Path(lock)
    try:
        held = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        run_dir = lock.parent
        untrained = _untrained(run_dir)
        if untrained:
            for name in ("config.yaml", IDENTITY_FILE, "metrics.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
            # what the trackers wrote of a run that logged no step (its hyperparameters, empty event files)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        lock.unlink(missing_ok=True)
        created = run_dir.resolve() in _CREATED
        _CREATED.discard(run_dir.resolve())
        if untrained and created:
            for sub in (checkpoint_dir(run_dir), run_dir / "tensorboard", run_dir):
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when empty


def _untrained(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds no trace of training: no checkpoint (complete or partial) and no logged step."""
    ckpts = checkpoint_dir(run_dir)
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return False
    metrics = run_dir / "metrics.jsonl"
    try:
        return not metrics.is_file() or not metrics.read_text().strip()
    except OSError:
        return False

