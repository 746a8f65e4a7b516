"""Self-describing checkpoints: ``step-NNNNNN/`` with the weights (safetensors), tokenizer, resolved config and the
resumable state (optimizer, scheduler, RNG, data position). Written to a temporary folder and renamed, so a folder
named ``step-*`` is always complete."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import Config, save_config
from ..errors import LoriError

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "lori_config.yaml"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_PARTIAL_DIR = re.compile(r"^\.step-\d{6,}\.")  # tempfile.mkdtemp(prefix=".step-NNNNNN.") in save_checkpoint


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


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    """Delete the temporary ``.step-*`` folders a killed run left in ``out_dir/checkpoints`` (never read: only
    complete ``step-*`` folders count). Call it from the one process that writes checkpoints, before it writes."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    partial = sorted(p for p in root.iterdir() if p.is_dir() and _PARTIAL_DIR.match(p.name))
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, cfg: Config, state: dict,
                    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None, keep: int = 2) -> Path:
    """Write ``out_dir/checkpoints/step-{step:06d}`` atomically and prune all but the newest ``keep``."""
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(out_dir, step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:06d}."))
    try:
        from .lora import is_peft_model, save_lora_checkpoint

        if is_peft_model(model):  # merged weights for use + the adapter for exact resume (lori.training.lora)
            save_lora_checkpoint(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_config(cfg, tmp / CONFIG_FILE)
        if extra_tensors:
            from safetensors.torch import save_file

            for name, tensors in extra_tensors.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        torch.save(state, tmp / STATE_FILE)
        if final.exists():  # re-saving the same step (e.g. a resumed run that stops where it started)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise LoriError(f"{path} is neither a checkpoint folder (with config.json) nor a run folder with checkpoints/step-*")


def load_state(ckpt: Path) -> dict:
    f = Path(ckpt) / STATE_FILE
    if not f.is_file():
        raise LoriError(f"{ckpt} has no {STATE_FILE}: it holds weights only and cannot be resumed")
    return torch.load(f, map_location="cpu", weights_only=False)
