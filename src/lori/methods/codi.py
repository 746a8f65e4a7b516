"""CODI, continuous chain of thought via self-distillation (Shen et al. 2025, arXiv 2502.21074).

One model, two passes per batch::

    teacher:  [bos] question || steps #### answer <eos>                     CE_T on steps and "#### answer <eos>"
    student:  [bos] question || <bot> [K thoughts] <eot> #### answer <eos>  CE_S on "#### answer <eos>"
    L_KD    = 1/L sum_l  |h_S^l - sg(h_T^l)| / std(sg(h_T^l))  at the last `####` token, every hidden state
    L       = alpha CE_T + beta CE_S + gamma L_KD

Thoughts go through ``codi.projector``, K = ``codi.latent_steps``; the student's side is the latent family's
(``methods/thoughts.py``), the distance ``losses/codi.py``. Defaults, differences from the authors': docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import CodiConfig
from ..data.render import answer_anchor, explicit_cot, segments
from ..data.schema import Example
from ..errors import LoriError
from ..losses import hidden_distance, token_cross_entropy
from . import common, thoughts
from .thoughts import Thoughts

THOUGHTS = Thoughts(latent_steps=lambda cfg: cfg.codi.latent_steps, projector=lambda cfg: cfg.codi.projector)


def render(example: Example, tokenizer, cfg, stage: int) -> dict:
    """The student's rendering (the latent family's, K = codi.latent_steps) plus ``teacher``: the explicit-CoT
    rendering and its answer anchor (the last ``####`` token); ``n_teacher`` counts the teacher's supervised tokens."""
    s = segments(example, tokenizer, cfg.model.chat_template)
    teacher = explicit_cot(s)
    if len(teacher["input_ids"]) > cfg.data.max_length:  # the loop checks the student's rendering only
        raise LoriError(f"{example.source}: renders to {len(teacher['input_ids'])} tokens, over "
                        f"data.max_length={cfg.data.max_length}; raise data.max_length or drop the example")
    n_teacher = teacher.pop("n_target")
    teacher["anchor"] = answer_anchor(s)
    student = THOUGHTS.render(example, tokenizer, cfg, stage)
    return {**student, "teacher": teacher, "n_teacher": n_teacher}


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The latent student's batch, plus the teacher batch of ``common.collate`` under ``teacher_*`` keys."""
    teacher = common.collate([it["teacher"] for it in items], pad_id)
    return {**thoughts.collate(items, pad_id), **{f"teacher_{k}": v for k, v in teacher.items()}}


@dataclass(frozen=True)
class CodiState:
    """What CODI's loss reads: its settings, and the student's language model, which the teacher pass runs on the
    explicit CoT (the same weights, outside the latent wrapper)."""

    cfg: CodiConfig
    lm: torch.nn.Module


def setup_training(student, cfg, train_set, device=None) -> CodiState:
    return CodiState(cfg=cfg.codi, lm=student.lm)


def loss(module, batch: dict[str, torch.Tensor], norm,
         state: CodiState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cc = state.cfg
    out, ce = thoughts.student_ce(module, batch, norm)
    # The teacher pass runs the same weights on the explicit CoT; its CE trains them, its states are detached below.
    t = state.lm(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                   output_hidden_states=True)
    ce_t = token_cross_entropy(t.logits[:, :-1], batch["teacher_labels"][:, 1:], num_tokens=norm.counts["teacher"])
    rows = torch.arange(batch["anchor"].shape[0], device=batch["anchor"].device)
    h_s = torch.stack([h[rows, batch["anchor"]] for h in out.suffix_states], dim=1)  # [B, L+1, d]
    h_t = torch.stack([h[rows, batch["teacher_anchor"]] for h in t.hidden_states], dim=1)  # [B, L+1, d]
    kd = hidden_distance(h_s, h_t, num_examples=norm.examples, kind=cc.distance)
    total = cc.alpha * ce_t + cc.beta * ce + cc.gamma * kd
    return total, {"ce": ce.detach(), "ce_teacher": ce_t.detach(), "distill": kd.detach(),
                   **thoughts.answer_parts(out, batch, norm)}


def card(cfg) -> list[str]:
    """The model card's CODI line (``lori export``): the loss weights and the distance."""
    cc = cfg.codi
    return [f"- **CODI**: alpha {cc.alpha}, beta {cc.beta}, gamma {cc.gamma}, distance {cc.distance}."]


METHOD = common.Method(name="codi", render=render, prompt=thoughts.prompt, collate=collate, wrap=THOUGHTS.wrap,
                       paper="CODI, continuous chain of thought via self-distillation (Shen et al. 2025, "
                             "arXiv 2502.21074)",
                       setup_training=setup_training, loss=loss, generation_kwargs=thoughts.generation_kwargs,
                       extra_tensors=thoughts.extra_tensors, thoughts=THOUGHTS, card=card)
