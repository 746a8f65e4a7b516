"""What the latent methods (LoRi, Coconut, CODI) share: the student's rendering, batching, the latent student
itself, its teacher-forced cross-entropy, its generation settings and its checkpoint's extra file.

Rendering (the final curriculum stage, and stage k before it)::

    final stage:  [bos] question || <bot> [K thoughts] <eot> #### answer <eos>
    stage k:      [bos] question || <bot> [k x c thoughts] <eot> steps[k s:] #### answer <eos>

with c = ``curriculum.thoughts_per_step`` and s = ``curriculum.steps_per_group`` (a group of c thoughts replaces s
steps); the CE covers the remaining language steps and ``#### answer <eos>``. Each
method chooses its K and its projector once, in its :class:`Thoughts` (from its own config section), and rendering
and the student both ask it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import Config
from ..data.render import encode, segments, step_spans
from ..data.schema import Example
from ..losses import IGNORE_INDEX, token_cross_entropy
from ..models.latent_student import PROJECTOR_FILE, LatentOutput, LatentStudent, add_latent_tokens
from ..utils import pad
from . import common


def render_latent(example: Example, tokenizer, cfg: Config, stage: int, latent_steps: int) -> dict:
    """Final stage: ``prompt <bot> [K thoughts] <eot> #### answer <eos>`` with K = ``latent_steps``. Curriculum
    stage k: the first k x s steps become k groups of c thoughts (fewer when the example has fewer steps) and the
    remaining steps stay as supervised language before ``####``."""
    s = segments(example, tokenizer, cfg.model.chat_template)
    bot, eot = tokenizer.convert_tokens_to_ids(["<bot>", "<eot>"])
    c, per = cfg.curriculum.thoughts_per_step, cfg.curriculum.steps_per_group
    n = len(example.steps)
    k = 0
    final = cfg.curriculum.is_final(stage)
    if final:
        thoughts, language = latent_steps, []
        groups = min(n, thoughts // c)
    else:
        k = min(stage * per, n)
        groups = -(-k // per)
        thoughts = groups * c
        rest = example.steps[k:]
        language = encode(tokenizer, " " + " ".join(rest)) if rest else []
    target = language + s.answer
    item = {
        "prompt_ids": s.prompt + [bot],
        "suffix_ids": [eot] + target,
        "suffix_labels": [IGNORE_INDEX] + target,
        # suffix position of the last `####` token: it predicts the first answer token (the answer anchor)
        "anchor": len(language) + s.marker_len,
        "latent_steps": thoughts,
        "prefix_steps": 0 if final else k,  # rationale steps the thoughts replace
        # thought groups anchored to steps (lori.step_anchors; lori.method.step_targets spreads the carried steps
        # over them): ceil(k / s), or at the final stage as many as K holds
        "groups": groups,
        "carried": n if final else k,  # the steps the groups carry
        "final": int(final),
        "n_target": len(target),
    }
    if cfg.curriculum.thought_positions == "aligned" and not final:
        item["thought_pos"], item["suffix_pos"] = aligned_positions(example, tokenizer, k, c, per)
    return item


def group_step(g: int, carried: int, groups: int) -> int:
    """The step (0-based) thought group ``g`` is anchored to when ``carried`` steps are spread evenly over ``groups``
    groups, each anchored to the last step it carries (the rule of lori.methods.lori.method.step_targets)."""
    return (g + 1) * carried // groups - 1


def aligned_positions(example: Example, tokenizer, k: int, c: int, per: int = 1) -> tuple[list[int], int]:
    """Positions, relative to ``<bot>``, of the thoughts that replace the first ``k`` steps (a group of ``c`` per
    ``per`` steps) and of ``<eot>`` (curriculum.thought_positions=aligned): a group's thoughts end where the
    teacher's rationale starts the result of the last step it carries (its last word where that is not at a token
    boundary), and ``<eot>`` takes the position just before step k's text, so the language after it keeps the
    teacher's positions."""
    spans = step_spans(example, tokenizer)
    thought_pos: list[int] = []
    for last in [min(g + per, k) - 1 for g in range(0, k, per)]:
        h, end = spans.handovers[last], spans.ends[last]
        at = h + 1 if h >= 0 else end - 1
        thought_pos += [at - (c - 1) + i for i in range(c)]
    suffix = max(spans.ends[k - 1] - 1, thought_pos[-1] + 1) if k else 1
    return thought_pos, suffix


def latent_student(lm, tokenizer, cfg: Config, checkpoint, latent_steps: int, projector: str) -> LatentStudent:
    """The latent student around ``lm`` (``<bot>``/``<eot>`` added), its projector restored from ``checkpoint``."""
    bot, eot = add_latent_tokens(lm, tokenizer)
    student = LatentStudent(lm, latent_steps, projector, bot, eot, position_offset=cfg.curriculum.thought_offset,
                            position_stride=cfg.curriculum.thought_stride)
    if checkpoint is not None:
        student.load_projector(checkpoint)
    return student


@dataclass(frozen=True)
class Thoughts:
    """A latent method's choice of thoughts, read from its config section in one place: ``latent_steps(cfg)``, K of
    the final stage, and ``projector(cfg)``, the projector's kind. Its :meth:`render` and :meth:`wrap` are the
    method's ``render`` and ``wrap``, so rendering and the student cannot disagree on K."""

    latent_steps: Callable[[Config], int]
    projector: Callable[[Config], str]

    def render(self, example: Example, tokenizer, cfg: Config, stage: int) -> dict:
        return render_latent(example, tokenizer, cfg, stage, self.latent_steps(cfg))

    def wrap(self, lm, tokenizer, cfg: Config, checkpoint=None) -> LatentStudent:
        return latent_student(lm, tokenizer, cfg, checkpoint, self.latent_steps(cfg), self.projector(cfg))


def prompt(example: Example, tokenizer, cfg: Config) -> list[int]:
    return segments(example, tokenizer, cfg.model.chat_template).prompt + [tokenizer.convert_tokens_to_ids("<bot>")]


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts left-padded (so all latent steps line up, as in generation), suffixes right-padded."""
    prompt_ids, prompt_mask = pad([it["prompt_ids"] for it in items], pad_id, side="left")
    suffix_ids, suffix_mask = pad([it["suffix_ids"] for it in items], pad_id)
    out = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "suffix_ids": suffix_ids,
        "suffix_mask": suffix_mask,
        "suffix_labels": pad([it["suffix_labels"] for it in items], IGNORE_INDEX)[0],
        "anchor": torch.tensor([it["anchor"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
        # Each example's own K (a curriculum stage gives an example with fewer steps fewer thoughts); the latent
        # loop masks the steps past an example's count.
        "latent_steps": torch.tensor([it["latent_steps"] for it in items]),
        "prefix_steps": torch.tensor([it.get("prefix_steps", 0) for it in items]),
        "groups": torch.tensor([it.get("groups", 0) for it in items]),
        "carried": torch.tensor([it.get("carried", 0) for it in items]),
        "final": items[0]["final"],
    }
    if "thought_pos" in items[0]:  # curriculum.thought_positions=aligned, before the final stage
        width = max(it["latent_steps"] for it in items)
        out["thought_pos"] = pad([it["thought_pos"] for it in items], 0, width=width)[0]
        out["suffix_pos"] = torch.tensor([it["suffix_pos"] for it in items])
    if "answer_len" in items[0]:
        out["answer_len"] = torch.tensor([it["answer_len"] for it in items])
    return out


def student_ce(module, batch: dict[str, torch.Tensor], norm) -> tuple[LatentOutput, torch.Tensor]:
    """The teacher-forced latent pass and its cross-entropy on the suffix (remaining language and ``#### answer
    <eos>``), divided by the step's global supervised-token count."""
    positions = (batch["thought_pos"], batch["suffix_pos"]) if "thought_pos" in batch else None
    out = module(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"],
                 latent_steps=batch["latent_steps"], positions=positions)
    return out, token_cross_entropy(out.logits[:, :-1], batch["suffix_labels"][:, 1:], num_tokens=norm.tokens)


def answer_parts(out: LatentOutput, batch: dict[str, torch.Tensor], norm) -> dict[str, torch.Tensor]:
    """The per-answer-token cross-entropies (``common.answer_parts``) of a latent pass."""
    return common.answer_parts(out.logits[:, :-1], batch["suffix_labels"][:, 1:], batch, norm)


def generation_kwargs(student: LatentStudent, tokenizer, cfg: Config) -> dict:
    return student.generation_kwargs()


def extra_tensors(student: LatentStudent) -> dict | None:
    kind = student.projector.kind
    return None if kind in ("identity", "soft") else {PROJECTOR_FILE: student.projector.state_dict()}
