"""Experiment trackers through accelerate's tracker API (``train.log_with``).

``metrics.jsonl`` is always written; every record also goes to the trackers named in ``train.log_with`` (any of
accelerate's, a class registered with ``accelerate.tracking.register_tracker_class``, or ``all``). A named tracker
that is not installed is refused before the run starts (accelerate would drop it with a warning). The project is
:data:`PROJECT`, the run name the run folder's; local files stay in the run folder (``OUT/tensorboard``,
``OUT/wandb``). A resumed run continues its tracker runs: wandb the same run (its id the folder's ``run_id``),
TensorBoard hiding the events logged after the checkpoint (``purge_step``), as ``metrics.jsonl`` drops them.
docs/training.md, docs/configuration.md (Experiment trackers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from ..config import Config, to_dict
from ..errors import LoriError
from .identity import _flatten

PROJECT = "lori"
LOGGING_DIR = "tensorboard"  # OUT/tensorboard: the folder of trackers that write local files
# pip package of each of accelerate's trackers (the module accelerate looks for)
PIP_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
               "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
               "swanlab": "swanlab"}


def tracker_names(cfg: Config) -> list[str]:
    """The trackers a run logs to: ``train.log_with`` plus ``tensorboard`` when ``train.tensorboard`` is set (its
    older spelling), each once. Refuses a named tracker that is not installed, naming the package to install."""
    names = list(dict.fromkeys([*cfg.train.log_with, *(["tensorboard"] if cfg.train.tensorboard else [])]))
    available = {str(t) for t in get_available_trackers()}
    builtin = {str(t) for t in LoggerType} - {"all"}
    for name in names:
        if name in builtin and name not in available:
            alias = name == "tensorboard" and name not in cfg.train.log_with
            key, drop = (("train.tensorboard=true", "set train.tensorboard=false") if alias else
                         (f"train.log_with: {name}", "remove it from train.log_with"))
            raise LoriError(f"{key}: the {name} tracker is not installed (accelerate would skip it silently); "
                            f"pip install {PIP_PACKAGE.get(name, name)}, or {drop}")
    return names


def project_configuration(out_dir: Path) -> ProjectConfiguration:
    return ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(Path(out_dir) / LOGGING_DIR))


def scalar_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as dotted keys with scalar values (what trackers store as hyperparameters): a list is
    written as its JSON text, ``null`` stays None."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in _flatten(to_dict(cfg)).items()}


def init_kwargs(out_dir: Path, run_id: str | None, step: int) -> dict[str, dict]:
    """Per-tracker arguments: wandb continues the run folder's run (``id`` = its ``run_id``, ``resume="allow"``) and
    keeps its files in the run folder; TensorBoard hides events past a resumed run's step."""
    out_dir = Path(out_dir)
    wandb = {"name": out_dir.name, "dir": str(out_dir), "resume": "allow"}
    if run_id:
        wandb["id"] = run_id
    return {"wandb": wandb, "tensorboard": {"purge_step": step + 1} if step else {}}


def start(accelerator, cfg: Config, out_dir: Path, run_id: str | None, step: int) -> None:
    """Start the trackers (accelerate's init_trackers runs on the main process only) and say which. The loop calls
    this last, when the run is about to train: a run refused before has none to clean up."""
    accelerator.init_trackers(PROJECT, config=scalar_config(cfg), init_kwargs=init_kwargs(out_dir, run_id, step))
    if accelerator.is_main_process and accelerator.log_with:
        print(f"[lori] trackers: {', '.join(t.name for t in accelerator.trackers)} (project {PROJECT!r}, "
              f"run {out_dir.name!r})")
    elif accelerator.is_main_process and "all" in cfg.train.log_with:
        print("[lori] train.log_with=all: no tracker is installed; metrics.jsonl only")


def finish(accelerator, failed: bool = False) -> None:
    """Finish the trackers of ``accelerator`` once (on the error paths too) without ending the process group, so
    the loop's teardown order stays its own; a wandb run of a run that ``failed`` is marked failed (exit code 1). A
    tracker that fails to finish is warned about: it does not turn a finished run into a failed one, nor hide the
    error a run stopped with."""
    trackers, accelerator.trackers = list(getattr(accelerator, "trackers", [])), []
    for tracker in trackers:
        try:
            run = getattr(tracker, "run", None)
            if failed and tracker.name == "wandb" and run is not None:
                run.finish(exit_code=1)
            else:
                tracker.finish()
        except Exception as e:  # noqa: BLE001 - a tracker's own failure (network, disk) must not hide the run's
            print(f"[lori] warning: the {getattr(tracker, 'name', type(tracker).__name__)} tracker did not finish "
                  f"cleanly: {type(e).__name__}: {e}", flush=True)
