"""SIM-CoT, step-level supervision of implicit chain of thought (arXiv 2509.20317; the authors' code InternLM/SIM-CoT,
``Coconut/coconut.py``, ``explain_mode: v1_aug``), on Coconut's student and curriculum::

    decoder input, group g:   [thought (g-1)c+1 .. gc] step_g <eos>      CE on step_g <eos>
    L = CE_student + weight * 1/G sum_g CE_decoder(g)     (CE_decoder summed over tokens, averaged over examples)

An auxiliary decoder reads group g's c thoughts, then the student's word embeddings of step g. At the final stage the
steps past the last group merge into it and groups past the last step are padded with the answer, as the authors do.
The decoder starts as a copy of the student's initial weights (theirs: the base model), is saved beside the model
(``sim_cot_decoder.safetensors``) and is never used in generation. docs/methods.md (SIM-CoT).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import SimCotConfig
from ..data.render import encode, segments
from ..data.schema import Example
from ..losses import IGNORE_INDEX
from ..models.checkpoint_folders import resolve_checkpoint
from ..models.latent_student import LatentStudent
from ..utils import pad
from . import thoughts
from .common import Method
from .thoughts import Thoughts

DECODER_FILE = "sim_cot_decoder.safetensors"


def final_thoughts(cfg) -> int:
    """K of the final stage: ``sim_cot.latent_steps``, or curriculum.stages x curriculum.thoughts_per_step."""
    k = cfg.sim_cot.latent_steps
    return cfg.curriculum.stages * cfg.curriculum.thoughts_per_step if k is None else k


THOUGHTS = Thoughts(latent_steps=final_thoughts, projector=lambda cfg: cfg.sim_cot.projector)


def group_targets(example: Example, tokenizer, cfg, groups: int, final: bool) -> list[list[int]]:
    """The decoder's target of each of ``groups`` thought groups: its rationale step (its ``curriculum.steps_per_group``
    steps) + EOS; at the final stage the steps past the last group merged into it and missing steps padded with the
    answer (``#### answer <eos>``)."""
    per = cfg.curriculum.steps_per_group
    steps = [" ".join(example.steps[i : i + per]) for i in range(0, len(example.steps), per)]
    if final and len(steps) > groups:
        steps = steps[: groups - 1] + [" ".join(steps[groups - 1 :])]
    eos = tokenizer.eos_token_id
    out = [encode(tokenizer, " " + s) + [eos] for s in steps[:groups]]
    answer = segments(example, tokenizer, cfg.model.chat_template).answer
    return out + [answer] * (groups - len(out))


def render(example: Example, tokenizer, cfg, stage: int) -> dict:
    item = THOUGHTS.render(example, tokenizer, cfg, stage)
    groups = item["latent_steps"] // cfg.curriculum.thoughts_per_step
    item["decoder_targets"] = group_targets(example, tokenizer, cfg, groups, cfg.curriculum.is_final(stage))
    return item


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The latent family's batch, plus ``decoder_ids [R, T]`` (right-padded with IGNORE_INDEX), one row per (example,
    group), and ``decoder_row [R]``, the example each row belongs to."""
    batch = thoughts.collate(items, pad_id)
    rows = [(b, g, t) for b, it in enumerate(items) for g, t in enumerate(it["decoder_targets"])]
    batch["decoder_ids"] = pad([t for _, _, t in rows], IGNORE_INDEX)[0] if rows else torch.zeros(0, 1).long()
    batch["decoder_row"] = torch.tensor([b for b, _, _ in rows], dtype=torch.long)
    batch["decoder_group"] = torch.tensor([g for _, g, _ in rows], dtype=torch.long)
    return batch


def wrap(lm, tokenizer, cfg, checkpoint=None) -> LatentStudent:
    """Coconut's student with the decoder as its ``decoder`` submodule: a copy of ``lm`` as it starts, or the one
    saved by the run being resumed (else by the sim-cot run ``model.init_from`` names)."""
    student = THOUGHTS.wrap(lm, tokenizer, cfg, checkpoint)
    student.decoder = copy.deepcopy(lm)
    own = student.decoder.get_input_embeddings().weight
    if own is not student.decoder.get_output_embeddings().weight:
        own.requires_grad_(False)  # never read (the text comes in through the student's embeddings)
    source = checkpoint or (resolve_checkpoint(cfg.model.init_from) if cfg.model.init_from else None)
    if source is not None and (Path(source) / DECODER_FILE).is_file():
        student.decoder.load_state_dict(load_file(str(Path(source) / DECODER_FILE)))
    return student


def decoder_loss(module, out, batch, c: int, norm) -> torch.Tensor:
    """``1/N sum_b 1/G_b sum_g CE(decoder reads group g's thoughts -> writes target g)``."""
    student = getattr(module, "module", module)
    ids, row, group = (batch[k].to(out.logits.device) for k in ("decoder_ids", "decoder_row", "decoder_group"))
    if not len(row):
        return out.logits.new_zeros(())
    feed = torch.cat([out.prompt_states[:, -1:], out.latent_states[:, -1, :-1]], dim=1)  # [B, K, d]
    fed = student.project(feed)  # the thoughts as the student's loop fed them
    idx = group[:, None] * c + torch.arange(c, device=ids.device)[None]  # [R, c]
    thought = fed[row[:, None], idx]  # [R, c, d]
    text = student.lm.get_input_embeddings()(ids.clamp(min=0))  # the student's word embeddings
    seq = torch.cat([thought, text.to(thought.dtype)], dim=1)
    real = ids != IGNORE_INDEX
    mask = torch.cat([torch.ones_like(real[:, :c]), real], dim=1).long()
    pos = torch.arange(1, seq.shape[1] + 1, device=ids.device)[None].expand(len(row), -1)  # 1-based, as theirs
    logits = student.decoder(inputs_embeds=seq, attention_mask=mask, position_ids=pos).logits
    # position c - 1 + t predicts target token t
    pred = logits[:, c - 1 : -1].float()
    ce = F.cross_entropy(pred.flatten(0, 1), ids.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    per_row = ce.view_as(ids).sum(1)  # summed over the tokens of one group
    groups = torch.zeros(out.logits.shape[0], device=ids.device).index_add_(0, row, torch.ones_like(per_row))
    return (per_row / groups[row]).sum() / norm.examples


def loss(module, batch, norm, state):
    out, ce = thoughts.student_ce(module, batch, norm)
    dec = decoder_loss(module, out, batch, state.thoughts_per_step, norm)
    total = ce + state.sim_cot.weight * dec
    return total, {"ce": ce.detach(), "decoder_ce": dec.detach(), **thoughts.answer_parts(out, batch, norm)}


@dataclass(frozen=True)
class SimCotState:
    sim_cot: SimCotConfig
    thoughts_per_step: int


def setup_training(module, cfg, train_set, device=None) -> SimCotState:
    return SimCotState(cfg.sim_cot, cfg.curriculum.thoughts_per_step)


def extra_tensors(student: LatentStudent) -> dict:
    # cloned: a decoder with tied embeddings shares one tensor between two names, which safetensors refuses
    decoder = {k: v.detach().clone() for k, v in student.decoder.state_dict().items()}
    return (thoughts.extra_tensors(student) or {}) | {DECODER_FILE: decoder}


METHOD = Method(name="sim-cot", paper="SIM-CoT, step-level supervision of Coconut's thoughts by an auxiliary decoder "
                      "(arXiv 2509.20317)", render=render, prompt=thoughts.prompt, collate=collate, wrap=wrap,
                setup_training=setup_training, loss=loss, generation_kwargs=thoughts.generation_kwargs,
                extra_tensors=extra_tensors, thoughts=THOUGHTS)
