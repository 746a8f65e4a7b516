"""iCoT-SI, stepwise internalization (Deng, Choi & Shieber 2024, arXiv 2405.14838).

Plain causal-LM fine-tuning whose rendering loses rationale tokens from the left as training goes on::

    stage k (1..stages):  [bos] question || rationale[r_k:] #### answer <eos>     CE on rationale[r_k:] and answer
    r_k = min(|rationale|, k * remove_per_stage + o),  P(o) = (1 - e^-lambda) e^(-lambda o)   ("removal smoothing")
    final stage:          [bos] question || #### answer <eos>                      (the No-CoT rendering)

The offset ``o`` is seeded by (train.seed, stage, the example): a stage renders alike whenever it is rendered, so a
resumed run matches an uninterrupted one. With ``curriculum.keep_positions`` the text left keeps its teacher position
ids (the answer then starts ``stages x remove_per_stage`` positions after the prompt). The authors' schedule and
how it maps: docs/methods.md (iCoT-SI).
"""

from __future__ import annotations

import math
import random

from ..data.render import segments, supervised
from ..data.schema import Example
from .common import Method, no_generation_kwargs


def removal_offset(example: Example, cfg, stage: int) -> int:
    """The example's extra removed tokens at ``stage``: geometric, P(o >= k) = e^(-lambda k); 0 without smoothing."""
    lam = cfg.curriculum.removal_smoothing_lambda
    if lam is None:
        return 0
    rng = random.Random(f"icot-si:{cfg.train.seed}:{stage}:{example.source}:{example.question}")
    return int(-math.log(1.0 - rng.random()) / lam)  # inverse CDF; 1 - random() is in (0, 1]


def removed_tokens(example: Example, cfg, stage: int, rationale_len: int) -> int:
    """How many rationale tokens (from the left) the rendering at ``stage`` deletes."""
    if cfg.curriculum.is_final(stage):
        return rationale_len
    return min(rationale_len, stage * cfg.curriculum.remove_per_stage + removal_offset(example, cfg, stage))


def render(example: Example, tokenizer, cfg, stage: int) -> dict[str, list[int]]:
    s = segments(example, tokenizer, cfg.model.chat_template)
    n = removed_tokens(example, cfg, stage, len(s.rationale))
    item = supervised(s.prompt, s.rationale[n:] + s.answer)
    if cfg.curriculum.keep_positions:
        gap = answer_gap(cfg) if cfg.curriculum.is_final(stage) else n
        item["positions"] = list(range(len(s.prompt))) + [len(s.prompt) + gap + i for i in range(item["n_target"])]
    return item


def answer_gap(cfg) -> int:
    """Positions skipped after the prompt at the final stage under ``curriculum.keep_positions`` (else 0)."""
    return cfg.curriculum.stages * cfg.curriculum.remove_per_stage if cfg.curriculum.keep_positions else 0


def generation_kwargs(module, tokenizer, cfg) -> dict:
    gap = answer_gap(cfg)
    return {"answer_gap": gap} if gap else no_generation_kwargs(module, tokenizer, cfg)


METHOD = Method(name="icot-si", render=render, generation_kwargs=generation_kwargs,
                paper="iCoT stepwise internalization (Deng et al. 2024, arXiv 2405.14838)")
