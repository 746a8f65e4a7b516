"""The curriculum clock: which stage the training loop renders its examples for, step by step.

A fixed curriculum (``curriculum.advance_below`` unset) moves a stage every ``cap`` steps
(``CurriculumConfig.stage_at``). An adaptive one stays in a stage until the mean training cross-entropy of its last
``curriculum.advance_window`` steps is below ``curriculum.advance_below``, or ``cap`` steps have passed. ``cap`` is
``curriculum.steps_per_stage``, lowered by ``curriculum.final_share`` so that the final stage gets that share of
``train.steps`` (``CurriculumConfig.stage_cap``; :func:`schedule` says it in words). The clock's state -- its stage,
the step that stage started at, the recent losses, the stage the last step trained in and the steps trained in the
final stage -- is saved with each checkpoint, so a resumed run advances where the uninterrupted one would and an
evaluation knows whether the checkpoint finished its curriculum.
"""

from __future__ import annotations

import collections
from typing import Callable

from ..config import Config, CurriculumConfig


def schedule(cfg: Config) -> str:
    """The curriculum of ``cfg`` in one line, printed when a run starts (and by ``lori compare`` for every run)."""
    cur, steps = cfg.curriculum, cfg.train.steps
    if not cur.stages:
        return f"no curriculum: the final rendering for all {steps} steps"
    cap = cur.stage_cap(steps)
    why = (f" (curriculum.steps_per_stage {cur.steps_per_stage} capped so that the final stage gets "
           f"curriculum.final_share {cur.final_share} of {steps} steps)" if cap < cur.steps_per_stage else "")
    rule = (f"ends when its training CE is below {cur.advance_below}, at most {cap} steps{why}" if cur.advance_below
            else f"{cap} steps{why}")
    latest = cur.stages * cap
    final = (f"the final stage from step {latest} at the latest: at least {steps - latest} steps "
             f"({100 * (steps - latest) / steps:.0f}% of train.steps)" if latest < steps else
             f"the final stage is NOT reached within train.steps={steps} when every stage takes {cap} steps "
             "(set curriculum.final_share to schedule it)")
    return f"curriculum: {cur.stages} stages, each {rule}; {final}"


class CurriculumClock:
    def __init__(self, cur: CurriculumConfig, train_steps: int, step: int, saved: dict | None = None):
        """The clock at optimizer step ``step`` of a run of ``train_steps``; ``saved``: the ``curriculum`` state of
        the checkpoint resumed."""
        saved = saved or {}
        self.cur = cur
        self.cap = cur.stage_cap(train_steps)
        self.adaptive = bool(cur.stages) and cur.advance_below is not None
        self.stage = saved.get("stage", cur.stage_at(step, self.cap)) if self.adaptive else cur.stage_at(step, self.cap)
        self.start = saved.get("start", (self.stage - 1) * self.cap if cur.stages else 0)
        self.recent = collections.deque(saved.get("recent", []), maxlen=cur.advance_window)
        self.trained = saved.get("trained")  # the stage the last step trained in (None before the first step)
        self.final_steps = saved.get("final_steps", 0)  # steps trained in the final stage

    def at(self, step: int) -> int:
        """The stage optimizer step ``step`` trains in."""
        if not self.adaptive:
            self.stage = self.cur.stage_at(step, self.cap)
        return self.stage

    def advance(self, step: int, totals: dict[str, float], say: Callable[[str], None] | None) -> None:
        """After step ``step`` (1-based) with loss terms ``totals``: an adaptive curriculum may end its stage."""
        self.trained = self.stage
        self.final_steps += self.cur.is_final(self.stage)
        if not self.adaptive or self.cur.is_final(self.stage):
            return
        recent, cur = self.recent, self.cur
        recent.append(totals.get("ce", totals["loss"]))
        learned = len(recent) == recent.maxlen and sum(recent) / len(recent) < cur.advance_below
        if learned or step - self.start >= self.cap:
            if say:
                say(f"[lori] step {step}: stage {self.stage} ends after {step - self.start} steps ("
                    + (f"ce {sum(recent) / len(recent):.4f} < {cur.advance_below}" if learned
                       else f"the stage cap of {self.cap} steps reached") + ")")
            self.stage, self.start = self.stage + 1, step
            recent.clear()

    def state(self) -> dict:
        """What a checkpoint saves (``saved`` of a resumed run)."""
        return {"stage": self.stage, "start": self.start, "recent": list(self.recent), "trained": self.trained,
                "final_steps": self.final_steps}
