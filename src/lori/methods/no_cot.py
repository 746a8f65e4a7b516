"""No-CoT: question -> answer directly (``#### answer``), cross-entropy on the answer only."""

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

name = "no-cot"
latent_steps = 0


def render(example: Example, tokenizer, cfg=None, stage: int = 1) -> dict[str, list[int]]:
    s = segments(example, tokenizer)
    return supervised(s.prompt, s.answer)


prompt = plain_prompt
loss = causal_lm_loss
wrap = plain_lm
collate = collate
setup_training = no_training_setup
generation_kwargs = no_generation_kwargs
extra_tensors = no_extra_tensors
