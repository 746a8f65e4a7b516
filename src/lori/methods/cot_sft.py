"""CoT-SFT (explicit chain of thought): question -> rationale -> answer, cross-entropy on rationale and answer.

This trains the teacher of every implicit method. Generation writes the rationale, then ``#### answer``.
"""

from __future__ import annotations

from ..data.render import explicit_cot, segments
from ..data.schema import Example
from .common import Method


def render(example: Example, tokenizer, cfg, stage: int = 1) -> dict[str, list[int]]:
    return explicit_cot(segments(example, tokenizer, cfg.model.chat_template))


METHOD = Method(name="cot-sft", render=render, paper="explicit chain-of-thought fine-tuning", curriculum=False)
