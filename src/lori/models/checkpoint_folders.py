"""Where a run's checkpoints live and how one is found: ``OUT/checkpoints/step-NNNNNN/``, each a self-describing
folder (weights, tokenizer, ``lori_config.yaml``). Reading only; the writer and the resumable trainer state are in
``lori.training.checkpoint``."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..config import Config, apply_overrides, config_from_dict, parse_overrides
from ..errors import LoriError

CONFIG_FILE = "lori_config.yaml"
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise LoriError(f"{path} is neither a checkpoint folder (with config.json) nor a run folder with checkpoints/step-*")


def checkpoint_config(ckpt: Path, overrides: list[str]) -> Config:
    """The config a checkpoint was trained with, plus ``eval.*``/``data.*`` overrides."""
    f = ckpt / CONFIG_FILE
    if not f.is_file():
        raise LoriError(f"{ckpt} has no {CONFIG_FILE}; was it written by `lori train`?")
    return config_from_dict(apply_overrides(yaml.safe_load(f.read_text()), parse_overrides(overrides)))
