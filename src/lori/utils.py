"""Small shared helpers: atomic writes, file modes, seeding, device facts, padding token lists into a batch."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import LoriError, WriteError


def umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the one portable way to read it)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a file everything here writes: what ``open()`` gives (0644 under the usual umask 022). Temporary
    files (``tempfile.mkstemp``: 0600, ``mkdtemp``: 0700) get it before they are renamed into place."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode of a folder everything here writes: what ``mkdir`` gives (0755 under the usual umask 022)."""
    return 0o777 & ~umask()


def share_tree(root: Path) -> None:
    """Give ``root`` and everything below it the modes of :func:`dir_mode` / :func:`file_mode` (a folder written
    through a temporary one, whose writers (``mkdtemp``, libraries' own atomic saves) leave 0700 / 0600)."""
    root = Path(root)
    fmode, dmode = file_mode(), dir_mode()
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, dmode)
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, fmode)


def write_failed(path: Path, e: OSError, kept: str = "") -> WriteError:
    """A one-line error for a write to ``path`` that failed with ``e`` (a full disk, no permission, a read-only
    file system); ``kept`` says what is still intact."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EEXIST: "a part of the path is a file, not a folder",
           errno.EISDIR: "it is a folder"}.get(e.errno, e.strerror or str(e))
    detail = e.strerror or str(e)
    fix = ("free some space or choose a writable folder" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
           "choose another path" if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST) else "choose a writable folder")
    return WriteError(f"could not write {path}: {why}{f' ({detail})' if detail != why else ''}; "
                      f"{kept + '; ' if kept else ''}{fix}, then run again", e)


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be written: ``folder`` itself when it exists, else the nearest
    existing folder above it (where it would be created). Nothing is created. ``what`` names the setting."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = "permission denied" + (f" in {probe}" if probe != folder else "")
    else:
        try:
            if os.statvfs(probe).f_flag & os.ST_RDONLY:
                problem = f"{probe} is on a read-only file system"
        except (OSError, AttributeError):
            pass
    if problem:
        raise LoriError(f"{what} {folder} cannot be written ({problem}); choose a writable folder")


@contextlib.contextmanager
def atomic_target(path: Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (os.replace), on failure it is
    removed. A reader never sees a half-written file, and an interrupted write leaves the old file intact. A write
    that fails with an OSError (a full disk, no permission) is a :class:`LoriError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_failed(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; results are meant to be shared like any other file
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, e, f"the previous {path.name} is unchanged" if path.exists() else "") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\n`` newlines) to ``path`` atomically, fsynced."""
    with atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def pad(seqs: list[list[int]], value: int, side: str = "right",
        width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer lists -> ``(values [B, W], mask [B, W])``, both long: each row padded with ``value`` to ``width``
    (default the longest row) on ``side`` (``"left"`` for prompts, so that their last tokens line up); ``mask`` is 1
    on the given entries. The one padding of every batch: training batches, generation prompts, teacher passes."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    values = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        at = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        values[i, at] = torch.tensor(s, dtype=torch.long)
        mask[i, at] = 1
    return values, mask


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    return hash_file(hashlib.sha256(), path).hexdigest()


def hash_file(h, path: Path):
    """Feed a file's content to the hash object ``h`` in 1 MiB blocks (memory stays flat for any size); returns
    ``h``."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h
