"""The training loop's guards: a run that goes wrong stops, or is warned about, instead of writing bad weights.

Every step's loss terms (and gradient norm) are checked before the optimizer step: a NaN or infinite one stops the
run with the step, the term and the last good checkpoint; the checkpoint holding the weights that gave it (if one was
saved just before) is moved aside, so the checkpoint named really is good. An update that makes the weights
non-finite, or grows their norm ``DIVERGED_FACTOR``-fold in one step, stops the run the same way before it is saved
(weights that are finite but huge still give finite losses for a step or two). A cross-entropy stuck at ln(vocab), a
uniform prediction, for ``UNIFORM_WINDOW`` steps is warned about.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from ..errors import LoriError
from . import sharding as fsdp
from .checkpoint import list_checkpoints, step_dir

DIVERGED_FACTOR = 10.0  # one update growing the weights' norm this much is a divergence (a healthy step: < 1.01)
UNIFORM_WINDOW = 50  # steps of cross-entropy at ln(vocab) before the collapse warning
_ADVICE = ("Lower train.lr or set train.grad_clip and train again (train.resume=never, or a new out_dir): a resumed "
           "run keeps the settings it started with")


class Guards:
    """The checks of one run, in the order the loop calls them: :meth:`check_terms` before the optimizer step,
    :meth:`check_update` after it, :meth:`watch_uniform` once the step is done. A failed check closes ``bar``
    (the progress bar) and raises a :class:`LoriError` on every process (all hold the same totals and weights)."""

    def __init__(self, module, unwrapped, sharded: bool, out_dir: Path, main: bool, bar):
        self.out_dir, self.main, self.bar = out_dir, main, bar
        lm = getattr(unwrapped, "lm", unwrapped)
        self.uniform_ce, self.uniform_run = math.log(lm.get_output_embeddings().weight.shape[0]), 0
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.weight_norm = fsdp.weight_norm if sharded else _weight_norm
        self.norm_before = self.weight_norm(self.trainable)

    def _stop(self, problem: str):
        self.bar.close()
        raise LoriError(problem)

    def check_terms(self, values: dict[str, float], step: int) -> None:
        """Refuse non-finite loss terms of ``step`` (1-based) before its optimizer step."""
        problem = _non_finite(values, step, self.out_dir, self.main)
        if problem:
            self._stop(problem)

    def check_update(self, step: int) -> None:
        """Refuse an update that made the weights non-finite or grew their norm DIVERGED_FACTOR-fold, even while
        the loss they give is still finite. From all-zero weights the first step is not judged."""
        norm_after = self.weight_norm(self.trainable)
        if not math.isfinite(norm_after) or 0 < DIVERGED_FACTOR * self.norm_before < norm_after:
            kept = list_checkpoints(self.out_dir)
            self._stop(f"step {step}: the update took the weights' norm from {self.norm_before:.4g} to "
                       f"{norm_after:.4g}: training diverged; no weights of step {step} were written; "
                       + (f"the last good checkpoint is {kept[-1]}" if kept else
                          "no checkpoint was saved before it") + f". {_ADVICE}")
        self.norm_before = norm_after

    def watch_uniform(self, totals: dict[str, float], step: int) -> None:
        """Warn once the cross-entropy has been ln(vocab) for UNIFORM_WINDOW steps in a row."""
        self.uniform_run = self.uniform_run + 1 if abs(totals.get("ce", math.nan) - self.uniform_ce) < 1e-3 else 0
        if self.uniform_run == UNIFORM_WINDOW and self.main:
            self.bar.write(f"[lori] warning: step {step}: the cross-entropy has been ln(vocab) = {self.uniform_ce:.4f}"
                           f" (a uniform prediction) for {UNIFORM_WINDOW} steps: the model has collapsed or is not "
                           "learning; lower train.lr or set train.grad_clip")


def _weight_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of all trainable weights together (float64 accumulation)."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in params])))


def _non_finite(values: dict[str, float], step: int, out_dir: Path, main: bool) -> str | None:
    """The error message for a step whose loss terms (or gradient norm) are not all finite, else None.

    The loss of ``step`` was computed from the weights after step ``step - 1``; a checkpoint of that step holds
    weights that give it, so it is moved aside to ``checkpoints/diverged-step-N`` (kept for inspection, never resumed)
    and the message names the newest checkpoint before it."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return None
    suspect = step_dir(out_dir, step - 1)
    good = [p for p in list_checkpoints(out_dir) if p != suspect]
    moved = ""
    if suspect.is_dir():
        aside = suspect.with_name(f"diverged-{suspect.name}")
        if main:
            shutil.rmtree(aside, ignore_errors=True)
            suspect.rename(aside)
        moved = f"; its weights (step {step - 1}) were moved to {aside}, never to be resumed"
    where = (f"the last good checkpoint is {good[-1]}" if good
             else "no good checkpoint remains" if moved else "no checkpoint was saved before it")
    return (f"step {step}: non-finite {', '.join(f'{k}={values[k]}' for k in bad)}; stopped before the optimizer "
            f"step, so no weights of step {step} were written{moved}; {where}. {_ADVICE}")
