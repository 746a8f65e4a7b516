"""Where a run's checkpoints live and how one is found: ``OUT/checkpoints/step-NNNNNN/``, each a self-describing
folder (weights, tokenizer, ``lori_config.yaml``, ``weights.sha256``). Reading only; the writer and the resumable
trainer state are in ``lori.training.checkpoint``.

``weights.sha256`` (the ``sha256sum`` format, so ``sha256sum -c weights.sha256`` checks it too) holds the digest of
every ``*.safetensors`` file of the folder, written with it; :func:`verify_weights` checks them before a model is
built from the folder (eval, ``lori.load``, resume, export, a teacher), so a flipped byte in a tensor is named, not
evaluated. :func:`weights_digest` (one digest over those files) is what a results row records of its weights."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from ..config import Config, apply_overrides, config_from_dict, parse_overrides, resolve_paths
from ..errors import LoriError
from ..utils import atomic_write_text, sha256_file

CONFIG_FILE = "lori_config.yaml"
WEIGHT_DIGESTS = "weights.sha256"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``out_dir/checkpoints/step-NNNNNN``."""
    return checkpoint_dir(out_dir) / f"step-{step:06d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path, field: str | None = None) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder. ``field`` (``model.init_from``,
    ``lori.teacher``): the setting that names it, for the error when there is none (a run not trained yet)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    if field is None:
        raise LoriError(f"{path} is neither a checkpoint folder (with config.json) nor a run folder with "
                        "checkpoints/step-*")
    what = "does not exist" if not path.exists() else "holds no checkpoint (no config.json, no checkpoints/step-*)"
    preset = Path("configs") / f"{path.name}.yaml"
    first = f"`lori train {preset}` first" if preset.is_file() else "the run it names first (its preset's out_dir)"
    raise LoriError(f"{field}: {path} {what}: train {first}, or set {field} to a trained run or checkpoint folder")


def checkpoint_config(ckpt: Path, overrides: list[str]) -> Config:
    """The config a checkpoint was trained with, plus ``eval.*``/``data.*`` overrides."""
    f = ckpt / CONFIG_FILE
    if not f.is_file():
        raise LoriError(f"{ckpt} has no {CONFIG_FILE}; was it written by `lori train`?")
    tree = resolve_paths(yaml.safe_load(f.read_text()), ckpt)  # an export's relative paths: against its folder
    return config_from_dict(apply_overrides(tree, parse_overrides(overrides)))


# ----------------------------------------------------------------------------------------------- weight digests
_digests: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: each file is hashed once per process
_unrecorded: set[Path] = set()  # folders already said to have no weights.sha256


def _file_digest(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(f)
    return _digests[key]


def weight_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def write_weight_digests(folder: Path) -> None:
    """Record the sha256 of every ``*.safetensors`` of ``folder`` in its ``weights.sha256``."""
    lines = [f"{sha256_file(f)}  {f.name}\n" for f in weight_files(folder)]
    atomic_write_text(Path(folder) / WEIGHT_DIGESTS, "".join(lines))


def _advice(folder: Path) -> str:
    if folder.parent.name == "checkpoints":
        return (f"delete {folder} and run the same `lori train` command again: it resumes from the checkpoint "
                "before it and reaches the same weights (or copy the folder again from where it was written)")
    return f"copy {folder} again from where it was written"


def verify_weights(folder: Path) -> dict[str, str]:
    """Check every ``*.safetensors`` of ``folder`` against its ``weights.sha256``; return ``{file name: sha256}``.

    A file whose content differs from its record, a recorded file that is missing and a weights file that is not
    recorded are one :class:`LoriError` naming the file. A folder without ``weights.sha256`` (written by an older
    lori, or a model folder from elsewhere) is accepted, and said once."""
    folder = Path(folder)
    record = folder / WEIGHT_DIGESTS
    files = weight_files(folder)
    if not record.is_file():
        if files and folder.resolve() not in _unrecorded and (folder / CONFIG_FILE).is_file():
            _unrecorded.add(folder.resolve())
            print(f"[lori] note: {folder} has no {WEIGHT_DIGESTS} (written by an older lori): its weights are not "
                  "checked for damaged bytes", flush=True)
        return {f.name: _file_digest(f) for f in files}
    want = {}
    for i, line in enumerate(record.read_text(encoding="utf-8").splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise LoriError(f"{record}:{i}: not a `SHA256  FILE` line; {_advice(folder)}")
        want[name] = digest
    for name in want:
        if not (folder / name).is_file():
            raise LoriError(f"{folder / name} is missing (listed in {WEIGHT_DIGESTS}); {_advice(folder)}")
    have = {}
    for f in files:
        if f.name not in want:
            raise LoriError(f"{f} is not listed in {record}: these are not the weights written with the folder; "
                            f"remove the file, or {_advice(folder)}")
        have[f.name] = _file_digest(f)
        if have[f.name] != want[f.name]:
            raise LoriError(f"{f} does not match the sha256 recorded in {WEIGHT_DIGESTS} when it was written "
                            f"(damaged: a flipped byte, a bad copy); {_advice(folder)}")
    return have


def weights_digest(folder: Path) -> str:
    """One sha256 over the checked digests of the folder's weights files (the model's and a projector's): what a
    results row records of the weights it evaluated."""
    h = hashlib.sha256()
    for name, digest in sorted(verify_weights(folder).items()):
        h.update(f"{digest}  {name}\n".encode())
    return h.hexdigest()
