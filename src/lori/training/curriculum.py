"""The curriculum clock: which stage the training loop renders its examples for, step by step.

A fixed curriculum (``curriculum.advance_below`` unset) moves a stage every ``curriculum.steps_per_stage`` steps
(``CurriculumConfig.stage_at``). An adaptive one stays in a stage until the mean training cross-entropy of its last
``curriculum.advance_window`` steps is below ``curriculum.advance_below``, or ``steps_per_stage`` have passed; its
stage, the step that stage started at and the recent losses are saved with each checkpoint, so a resumed run
advances where the uninterrupted one would.
"""

from __future__ import annotations

import collections
from typing import Callable

from ..config import CurriculumConfig


class CurriculumClock:
    def __init__(self, cur: CurriculumConfig, step: int, saved: dict | None = None):
        """The clock at optimizer step ``step``; ``saved``: the ``curriculum`` state of the checkpoint resumed."""
        saved = saved or {}
        self.cur = cur
        self.adaptive = bool(cur.stages) and cur.advance_below is not None
        self.stage = saved.get("stage", cur.stage_at(step)) if self.adaptive else cur.stage_at(step)
        self.start = saved.get("start", (self.stage - 1) * cur.steps_per_stage if cur.stages else 0)
        self.recent = collections.deque(saved.get("recent", []), maxlen=cur.advance_window)
        # the stage of the last step trained: the optimizer state restored with a checkpoint belongs to it
        self.trained = saved.get("trained", self.stage)

    def at(self, step: int) -> int:
        """The stage optimizer step ``step`` trains in."""
        if not self.adaptive:
            self.stage = self.cur.stage_at(step)
        self.trained = self.stage
        return self.stage

    def advance(self, step: int, totals: dict[str, float], say: Callable[[str], None] | None) -> None:
        """After step ``step`` (1-based) with loss terms ``totals``: an adaptive curriculum may end its stage."""
        if not self.adaptive or self.cur.is_final(self.stage):
            return
        recent, cur = self.recent, self.cur
        recent.append(totals.get("ce", totals["loss"]))
        learned = len(recent) == recent.maxlen and sum(recent) / len(recent) < cur.advance_below
        if learned or step - self.start >= cur.steps_per_stage:
            if say:
                say(f"[lori] step {step}: stage {self.stage} ends after {step - self.start} steps ("
                    + (f"ce {sum(recent) / len(recent):.4f} < {cur.advance_below}" if learned
                       else "curriculum.steps_per_stage reached") + ")")
            self.stage, self.start = self.stage + 1, step
            recent.clear()

    def state(self) -> dict:
        """What a checkpoint saves (``saved`` of a resumed run)."""
        return {"stage": self.stage, "start": self.start, "recent": list(self.recent), "trained": self.trained}
