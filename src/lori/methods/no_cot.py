"""No-CoT: question -> answer directly (``#### answer``), cross-entropy on the answer only."""

from __future__ import annotations

from ..data.render import segments, supervised
from ..data.schema import Example
from .common import Method


def render(example: Example, tokenizer, cfg, stage: int = 1) -> dict[str, list[int]]:
    s = segments(example, tokenizer, cfg.model.chat_template)
    return supervised(s.prompt, s.answer)


METHOD = Method(name="no-cot", render=render, paper="direct answer fine-tuning (no chain of thought)",
                curriculum=False)
