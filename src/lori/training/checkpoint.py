"""Self-describing checkpoints: ``step-NNNNNN/`` with the weights (safetensors), tokenizer, resolved config and the
resumable state (optimizer, scheduler, RNG, data position). Written to a temporary folder and renamed, so a folder
named ``step-*`` is always complete.

Under ``train.sharding: fsdp`` (lori.training.sharding) the main process makes the temporary folder
(:func:`temporary_folder`), every process writes its shards of the model and optimizer state into its ``sharded/``
(torch.distributed.checkpoint), and after a barrier the main process writes the rest with the gathered full
weights (``save_checkpoint(..., tmp=, state_dict=)``) and renames the folder: ``model.safetensors`` is the same as
an unsharded run's, and ``trainer_state.pt`` holds no optimizer state (it is in ``sharded/``).

The loop's side: :class:`Saver` writes a checkpoint from every process together, :func:`restore` resumes one."""

from __future__ import annotations

import errno
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import Config, save_config
from ..distributed import all_gather, broadcast_object
from ..errors import LoriError, WriteError
# The folder layout and its reading live with the models (evaluation, precompute and analysis read checkpoints);
# the writer and the resumable state stay here with the loop.
from ..models.checkpoint_folders import (CONFIG_FILE, checkpoint_dir, list_checkpoints, resolve_checkpoint, step_dir,
                                         write_weight_digests)
from ..utils import rng_state, set_rng_state, share_tree, write_failed
from ..models.build import quiet_progress
from ..models.lora import is_peft_model, save_lora_checkpoint
from . import sharding as fsdp
from .identity import truncate_metrics

STATE_FILE = "trainer_state.pt"
BEST_DIR = "best"  # OUT/checkpoints/best: the best-validation checkpoint of the final stage (train.keep_best)
BEST_FILE = "best.json"  # in it: {"step", "valid_accuracy"}
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint's folder of a checkpoint written under train.sharding=fsdp
_PARTIAL_DIR = re.compile(r"^\.step-\d{6,}\.")  # tempfile.mkdtemp(prefix=".step-NNNNNN.") in save_checkpoint


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


_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "iostream error", "file write failed")


def _write_failure(e: BaseException) -> OSError | None:
    """The OSError behind a failed checkpoint write, or None when ``e`` is no write failure. PyTorch's zip writer
    reports a full disk as a RuntimeError ("PytorchStreamWriter failed writing file ...", "[enforce fail at
    inline_container.cc] unexpected pos", "basic_ios::clear: iostream error")."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, WriteError):
            return err.error
        if isinstance(err, OSError):
            return err
        if isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_WRITE_FAILURES):
            return OSError(errno.EIO, f"PyTorch could not write the file: {str(err).splitlines()[0][:120]}")
    return None


def _verify(folder: Path) -> None:
    """Check that every weights file and the trainer state written to ``folder`` is complete (the headers of the
    safetensors files cover their files exactly; the zip directory of the state, at its end, is readable): a writer
    that ignored a full disk leaves a short file, which this refuses before the folder is named ``step-*``."""
    for f in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # SafetensorError: header too small, incomplete metadata, file not fully covered
            raise OSError(errno.EIO, f"{f.name} was written incomplete ({str(e).splitlines()[0][:100]})") from None
    sharded = folder / SHARDED_DIR
    if sharded.is_dir() and not (sharded / ".metadata").is_file():  # written last, once every process's shards are
        raise OSError(errno.EIO, f"{SHARDED_DIR}/ has no .metadata: the sharded state was written incomplete")
    state = folder / STATE_FILE
    if state.is_file():
        try:
            with zipfile.ZipFile(state):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise OSError(errno.EIO, f"{STATE_FILE} was written incomplete ({e})") from None


def temporary_folder(out_dir: Path, step: int) -> Path:
    """The temporary folder the checkpoint of ``step`` is written into (renamed to ``step-NNNNNN`` when complete);
    a failure to make it is a :class:`LoriError` like a failed write. Warns when the disk looks too full for it."""
    root = checkpoint_dir(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:06d}."))
    except OSError as e:
        raise _failed(step_dir(out_dir, step), e, out_dir) from None
    _warn_if_short_of_space(root, step_dir(out_dir, step))
    return tmp


def write_error(out_dir: Path, step: int, e: BaseException) -> LoriError | None:
    """The one-line error for a checkpoint write that failed with ``e`` (a full disk, no permission; also each
    process's failure inside torch.distributed.checkpoint's ``CheckpointException``), or None for another error."""
    failures = getattr(e, "failures", None) or {}  # CheckpointException: {rank: (exception, traceback)}
    causes = [e, *(f[0] if isinstance(f, tuple) else f for f in failures.values())]
    for err in causes:
        cause = _write_failure(err) if isinstance(err, BaseException) else None
        if cause is not None:
            return _failed(step_dir(out_dir, step), cause, out_dir)
    return None


def save_checkpoint(out_dir: Path, step: int, model, tokenizer, cfg: Config, state: dict,
                    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None, keep: int = 2,
                    tmp: Path | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``out_dir/checkpoints/step-{step:06d}`` atomically and prune all but the newest ``keep``.

    ``tmp``: a :func:`temporary_folder` other processes already wrote into (its ``sharded/`` state); ``state_dict``:
    the model's full weights, gathered (``model`` itself is then sharded and only gives its config).

    Folders and files get the modes ``mkdir`` and ``open`` give (0755 / 0644 under umask 022), not the 0700 / 0600
    of the temporary folder and of libraries' own atomic saves. A write that fails (a full disk, no permission) is a
    :class:`LoriError` naming the folder and the newest complete checkpoint, which is left intact."""
    final = step_dir(out_dir, step)
    tmp = tmp or temporary_folder(out_dir, step)
    try:
        with quiet_progress():
            if is_peft_model(model):  # merged weights for use + the adapter for exact resume (lori.models.lora)
                save_lora_checkpoint(model, tmp)
            else:
                model.save_pretrained(tmp, safe_serialization=True, **({} if state_dict is None else
                                                                       {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)
        save_config(cfg, tmp / CONFIG_FILE)
        if extra_tensors:
            for name, tensors in extra_tensors.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        torch.save(state, tmp / STATE_FILE)
        _verify(tmp)
        write_weight_digests(tmp)
        share_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. a resumed run that stops where it started)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _write_failure(e)
        if cause is not None:
            raise _failed(final, cause, out_dir) from None
        raise
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _warn_if_short_of_space(root: Path, final: Path) -> None:
    """Warn when the disk holds less free space than the newest checkpoint took (the next one needs as much)."""
    previous = [p for p in list_checkpoints(root.parent) if p != final]
    if not previous:
        return
    try:
        need = sum(f.stat().st_size for f in previous[-1].rglob("*") if f.is_file())
        free = shutil.disk_usage(root).free
    except OSError:
        return
    if free < need:
        print(f"[lori] warning: {free / 2**20:.0f} MiB free on the disk of {root}, but the last checkpoint took "
              f"{need / 2**20:.0f} MiB: writing {final.name} may fail (the earlier checkpoints stay intact)",
              flush=True)


def _failed(final: Path, e: OSError, out_dir: Path) -> LoriError:
    previous = [p for p in list_checkpoints(out_dir) if p != final]
    kept = (f"the previous checkpoint {previous[-1]} is intact (a resumed run starts from it)" if previous
            else "no earlier checkpoint of this run exists")
    try:
        free = f"; {shutil.disk_usage(checkpoint_dir(out_dir)).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    return write_failed(final, e, f"the partial folder was removed and {kept}{free}")


def load_state(ckpt: Path) -> dict:
    f = Path(ckpt) / STATE_FILE
    if not f.is_file():
        raise LoriError(f"{ckpt} has no {STATE_FILE}: it holds weights only and cannot be resumed")
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # a truncated or overwritten zip archive
        raise LoriError(f"{f} is damaged or truncated ({str(e).splitlines()[0][:100]}); delete {ckpt} and run the "
                        "same command again: it resumes from the checkpoint before it and reaches the same weights "
                        "(or resume from another one with train.resume=FOLDER)") from None


def read_best(out_dir: Path) -> dict | None:
    """``{"step", "valid_accuracy"}`` of ``out_dir/checkpoints/best`` (train.keep_best), or None when there is
    none."""
    f = checkpoint_dir(out_dir) / BEST_DIR / BEST_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def keep_best(out_dir: Path, ckpt: Path, step: int, accuracy: float) -> Path:
    """Make a copy of checkpoint ``ckpt`` (of ``step``, validation accuracy ``accuracy``) ``out_dir/checkpoints/best``
    (beside the ``step-*`` folders, never counted among them), replacing the earlier one; copied to a temporary folder
    (a partial checkpoint to :func:`remove_partial_checkpoints`) and renamed, so ``best`` is always complete."""
    best = checkpoint_dir(out_dir) / BEST_DIR
    tmp = best.with_name(f".step-{step:06d}.{BEST_DIR}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(ckpt, tmp)
        (tmp / BEST_FILE).write_text(json.dumps({"step": step, "valid_accuracy": accuracy}) + "\n")
        drop_best(out_dir)
        tmp.rename(best)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(best, e, "the best checkpoint was not kept") from None
    return best


def drop_best(out_dir: Path) -> None:
    """Remove ``out_dir/checkpoints/best`` (a fresh run, or one resumed before the step it was kept at)."""
    shutil.rmtree(checkpoint_dir(out_dir) / BEST_DIR, ignore_errors=True)


def resume_point(cfg: Config, out_dir: Path) -> Path | None:
    """The checkpoint ``train.resume`` names: ``auto``, the newest in ``out_dir`` (none yet: a fresh run); ``never``,
    None; else the folder it names."""
    if cfg.train.resume == "auto":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    if cfg.train.resume != "never":
        return resolve_checkpoint(cfg.train.resume)
    return None


def restore(resume_from: Path | None, cfg: Config, module, optimizer, scheduler, sharded: bool, accelerator,
            out_dir: Path) -> tuple[int, int, dict, float]:
    """Load the optimizer, scheduler and RNG state of ``resume_from`` (the weights were loaded with the model) and
    return its step, data cursor, curriculum clock state and training wall seconds; ``(0, 0, {}, 0.0)`` for a fresh
    run."""
    if resume_from is None:
        return 0, 0, {}, 0.0
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    state = load_state(resume_from)
    clock = state.get("curriculum") or {}
    if "optimizer" in state:
        if sharded:  # identity refuses a changed train.sharding; this is a checkpoint from elsewhere
            raise LoriError(f"{resume_from} was written without sharding (its optimizer state is one file); "
                            "resume it with train.sharding=none")
        optimizer.load_state_dict(state["optimizer"])
    else:  # written under sharding: model and optimizer state in sharded/, resharded to this run's processes
        fsdp.load_sharded(module, optimizer, resume_from / SHARDED_DIR)
    scheduler.load_state_dict(state["scheduler"])
    per_process = state.get("rng_per_process") or []
    # Each process continues its own random stream when the run resumes with as many processes as it saved.
    set_rng_state(per_process[rank] if len(per_process) == world else state["rng"])
    step, cursor = state["step"], state["cursor"]
    if step > cfg.train.steps:
        raise LoriError(f"{resume_from} is at step {step}, past train.steps={cfg.train.steps}; set train.steps "
                        f">= {step}, or start over with train.resume=never")
    if main:
        print(f"[lori] resumed from {resume_from} at step {step}")
        dropped = truncate_metrics(out_dir / "metrics.jsonl", step)  # the steps after it are logged again
        if dropped:
            print(f"[lori] metrics.jsonl: dropped {dropped} line(s) after step {step}")
    return step, cursor, clock, state.get("wall_s", 0.0)


@dataclass
class Saver:
    """The training loop's checkpoints: ``saver(step, cursor)`` writes ``step-NNNNNN`` with the weights, the method's
    extra tensors and the resumable state (scheduler, optimizer, every process's RNG, the data cursor, the
    curriculum clock). Every process calls it together; the main process writes (under sharding every process
    writes its shards). A failed write closes ``bar`` and raises the same :class:`LoriError` on every process."""

    cfg: Config
    accelerator: Any
    module: Any  # as prepared by accelerate
    optimizer: Any
    scheduler: Any
    method: Any
    tokenizer: Any
    clock: Any  # lori.training.curriculum.CurriculumClock
    sharded: bool
    bar: Any
    elapsed: Callable[[], float]  # the run's training wall seconds so far (resumed runs included)

    def __call__(self, at_step: int, cursor: int) -> Path:
        cfg, accelerator, module, optimizer, method = (self.cfg, self.accelerator, self.module, self.optimizer,
                                                       self.method)
        out_dir, main, world = Path(cfg.out_dir), accelerator.is_main_process, accelerator.num_processes
        unwrapped = accelerator.unwrap_model(module)
        rngs = all_gather(rng_state(), world)
        state = {"scheduler": self.scheduler.state_dict(), "rng": rngs[0],
                 "rng_per_process": rngs, "step": at_step, "cursor": cursor, "curriculum": self.clock.state(),
                 "wall_s": self.elapsed()}
        lm_of = lambda m: getattr(m, "lm", m)  # noqa: E731
        path = failed = saved = None
        if self.sharded:  # every process writes its shards; the main process gets the gathered weights
            saved, failed = _save_sharded(module, optimizer.optimizer, method.extra_tensors(unwrapped), out_dir,
                                          at_step, main, world)
        else:
            state["optimizer"] = optimizer.state_dict()
        if main and not failed:
            try:
                if self.sharded:  # the full weights of the language model (a latent student's under "lm.")
                    tmp, full, extra = saved
                    prefix = "lm." if lm_of(unwrapped) is not unwrapped else ""
                    path = save_checkpoint(out_dir, at_step, lm_of(unwrapped), self.tokenizer, cfg, state,
                                           extra_tensors=extra, keep=cfg.train.keep_checkpoints, tmp=tmp,
                                           state_dict={k[len(prefix):]: v for k, v in full.items()
                                                       if k.startswith(prefix)})
                else:
                    path = save_checkpoint(out_dir, at_step, lm_of(unwrapped), self.tokenizer, cfg, state,
                                           extra_tensors=method.extra_tensors(unwrapped),
                                           keep=cfg.train.keep_checkpoints)
            except LoriError as e:  # a full disk, an unwritable folder: every process stops, none waits forever
                failed = str(e)
        failed = broadcast_object(failed, world)
        if failed:
            self.bar.close()
            raise LoriError(failed)
        accelerator.wait_for_everyone()
        return path or step_dir(out_dir, at_step)


def _save_sharded(module, optimizer, extra_tensors, out_dir: Path, step: int, main: bool, world: int):
    """The collective part of a checkpoint under sharding: the main process makes the temporary folder, every
    process writes its shards of the model and optimizer state into ``sharded/`` and takes part in gathering the
    full weights (and the method's extra tensors) onto the main process. Returns ``((tmp, full weights, extra
    tensors) on the main process, None elsewhere; the error every process stops with, or None)``."""
    tmp = failed = None
    if main:
        try:
            tmp = temporary_folder(out_dir, step)
        except LoriError as e:
            failed = str(e)
    tmp, failed = broadcast_object((tmp, failed), world)
    if failed:
        return None, failed
    from torch.distributed.checkpoint.api import CheckpointException  # sharded runs only (lori.training.sharding)

    problem = None
    try:
        fsdp.save_sharded(module, optimizer, tmp / SHARDED_DIR)
    except (Exception, CheckpointException) as e:  # raised on every process when one failed to write its part
        err = write_error(out_dir, step, e)
        problem = str(err) if err is not None else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    problems = [p for p in all_gather(problem, world) if p]
    if problems:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        return None, problems[0]
    full = fsdp.full_state_dict(module)
    extra = fsdp.full_tensors(extra_tensors, main)
    return ((tmp, full, extra) if main else None), None
