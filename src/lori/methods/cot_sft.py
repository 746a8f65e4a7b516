"""CoT-SFT (explicit chain of thought): question -> rationale -> answer, cross-entropy on rationale and answer.

This trains the teacher of every implicit method. Generation writes the rationale, then ``#### answer``.
"""

from __future__ import annotations

from ..data.render import segments, supervised
from ..data.schema import Example
from .common import Method


def render(example: Example, tokenizer, cfg=None, stage: int = 1) -> dict[str, list[int]]:
    s = segments(example, tokenizer)
    return supervised(s.prompt, s.rationale + s.answer)


METHOD = Method(name="cot-sft", render=render)
