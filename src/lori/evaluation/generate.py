"""Batched greedy generation with a KV cache, for explicit and latent students alike (same stop rules).

Prompts are left-padded; positions are derived from the attention mask so padding never shifts a sequence. A latent
student runs ``latent_steps`` continuous steps after its prompt (which ends in ``<bot>``): each step feeds
``project(last hidden state)`` back as the next input embedding — deterministic, no sampling — then ``<eot>``,
then ordinary greedy tokens until EOS.

``steps`` counts the sequential decoding steps after the prompt, per problem: latent steps, the ``<eot>`` step,
and generated tokens up to and including EOS. It is the "generated tokens" figure in every report. ``truncated``
marks a problem whose decoding hit ``max_new_tokens`` without emitting EOS: its ``steps`` is cut there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..models.latent_student import latent_loop, thought_positions
from ..utils import pad


@dataclass
class Generation:
    tokens: list[list[int]]  # generated token ids per problem, EOS excluded
    steps: list[int]  # decoding steps after the prompt per problem (see module docstring)
    truncated: list[bool] = field(default_factory=list)  # per problem: hit max_new_tokens without EOS


@torch.no_grad()
def greedy_generate(
    model,
    prompts: list[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    latent_steps: int = 0,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eot_id: int | None = None,
    position_offset: int = 0,
    position_stride: int = 1,
    replace_thoughts: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    answer_gap: int = 0,
) -> Generation:
    """Greedy decoding of a batch of prompts; see the module docstring. ``project`` maps [B, 1, d] -> [B, 1, d];
    the latent steps sit at the positions of ``lori.models.latent_student.thought_positions`` (offset, stride).
    ``replace_thoughts(j, thought [B, 1, d])`` returns the thought fed at latent step j instead of the student's
    own (``latent_loop``'s ``replace``; the interventions of ``lori.analysis.necessity``). ``answer_gap``: the
    generated tokens of an explicit student start that many positions after the prompt's end (iCoT-SI under
    ``curriculum.keep_positions``: where its teacher's rationale was)."""
    if latent_steps and (project is None or eot_id is None):
        raise ValueError("latent generation needs a projector and the <eot> id")
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in pad(prompts, pad_id, side="left"))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                output_hidden_states=latent_steps > 0)
    cache = out.past_key_values
    next_pos = pos[:, -1:] + 1 + answer_gap
    batch = len(prompts)
    ones = torch.ones((batch, 1), dtype=mask.dtype, device=device)

    def step(**inputs):
        nonlocal mask, next_pos, cache
        mask = torch.cat([mask, ones], dim=1)
        o = model(**inputs, attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True,
                  output_hidden_states=False)
        cache, next_pos = o.past_key_values, next_pos + 1
        return o

    if latent_steps:
        tpos, start = thought_positions(pos[:, -1:], torch.full((batch,), latent_steps, device=device),
                                        latent_steps, position_offset, position_stride)
        # the latent loop training runs (lori.models.latent_student.latent_loop), every step real for every problem
        every = torch.ones((batch, latent_steps), dtype=mask.dtype, device=device)
        out, mask, _ = latent_loop(model, project, out, mask, tpos, every, keep_states=False, replace=replace_thoughts)
        cache = out.past_key_values
        next_pos = start  # <eot> right after the last thought
        out = step(input_ids=torch.full((batch, 1), eot_id, dtype=torch.long, device=device))
    prefix_steps = latent_steps + (1 if latent_steps else 0)

    tokens: list[list[int]] = [[] for _ in range(batch)]
    steps = [prefix_steps] * batch
    done = [False] * batch
    for _ in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        for i, t in enumerate(nxt.tolist()):  # one device sync per step, not per problem
            if done[i]:
                continue
            steps[i] += 1
            if t == eos_id:
                done[i] = True
            else:
                tokens[i].append(t)
        if all(done):
            break
        nxt = torch.where(torch.tensor(done, device=device), torch.full_like(nxt, pad_id), nxt)
        out = step(input_ids=nxt[:, None])
    return Generation(tokens, steps, [not d for d in done])


def generate_batches(model, prompts: list[list[int]], batch_size: int, *, progress: bool = False,
                     desc: str = "generate", **kwargs) -> Generation:
    """:func:`greedy_generate` over ``prompts`` in batches of ``batch_size``, the results concatenated in order: what
    ``lori eval`` (``lori.evaluation.evaluate``) and ``lori.load(...).generate`` (``lori.student``) both run."""
    tokens, steps, truncated = [], [], []
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        g = greedy_generate(model, prompts[s : s + batch_size], **kwargs)
        tokens += g.tokens
        steps += g.steps
        truncated += g.truncated
    return Generation(tokens, steps, truncated)


def decode(tokenizer, tokens: list[int]) -> str:
    """The text of generated ``tokens`` as every report scores it: special tokens (``<eot>``, padding) dropped."""
    return tokenizer.decode(tokens, skip_special_tokens=True)
