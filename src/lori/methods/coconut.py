"""Coconut, chain of continuous thought (Hao et al. 2024, arXiv 2412.06769).

LoRi's latent student and staged curriculum without the LoRi terms: the last hidden state is fed back (through the
identity projector by default, ``coconut.projector``) as the next input embedding between ``<bot>`` and ``<eot>``::

    stage k (1..stages):  [bos] question || <bot> [k*c thoughts] <eot> steps[k:] #### answer <eos>
    final stage:          [bos] question || <bot> [K thoughts] <eot> #### answer <eos>
    L = CE on the remaining language steps and "#### answer <eos>"

with c = ``curriculum.thoughts_per_step`` and K = ``coconut.latent_steps`` (default stages x c). Rendering,
batching, the student and its checkpoint are the latent family's (``methods/thoughts.py``); docs/methods.md.
"""

from __future__ import annotations

from . import thoughts
from .common import Method
from .thoughts import Thoughts


def final_thoughts(cfg) -> int:
    """K of the final stage: ``coconut.latent_steps``, or curriculum.stages x curriculum.thoughts_per_step."""
    k = cfg.coconut.latent_steps
    return cfg.curriculum.stages * cfg.curriculum.thoughts_per_step if k is None else k


THOUGHTS = Thoughts(latent_steps=final_thoughts, projector=lambda cfg: cfg.coconut.projector)


def loss(module, batch, norm, state=None):
    out, ce = thoughts.student_ce(module, batch, norm)
    return ce, {"ce": ce.detach(), **thoughts.answer_parts(out, batch, norm)}


METHOD = Method(name="coconut", render=THOUGHTS.render,
                paper="Coconut, chain of continuous thought (Hao et al. 2024, arXiv 2412.06769)", prompt=thoughts.prompt, collate=thoughts.collate,
                wrap=THOUGHTS.wrap, loss=loss, generation_kwargs=thoughts.generation_kwargs,
                extra_tensors=thoughts.extra_tensors, thoughts=THOUGHTS)
