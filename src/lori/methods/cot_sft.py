"""CoT-SFT (explicit chain of thought): question -> rationale -> answer, cross-entropy on rationale and answer.

This trains the teacher of every implicit method. Generation writes the rationale, then ``#### answer``.
"""

from __future__ import annotations

from ..data.schema import Example
from .common import (
    causal_lm_loss,
    collate,
    no_extra_tensors,
    no_generation_kwargs,
    no_training_setup,
    plain_lm,
    plain_prompt,
)
from .render import segments, supervised

name = "cot-sft"
latent_steps = 0  # explicit generation


def render(example: Example, tokenizer, cfg=None, stage: int = 1) -> dict[str, list[int]]:
    s = segments(example, tokenizer)
    return supervised(s.prompt, s.rationale + s.answer)


prompt = plain_prompt
loss = causal_lm_loss
wrap = plain_lm
collate = collate
setup_training = no_training_setup
generation_kwargs = no_generation_kwargs
extra_tensors = no_extra_tensors
