"""Pieces several methods share: the :class:`Method` protocol, batching rendered examples and the plain causal-LM
loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import Config
from ..data.render import segments
from ..losses import IGNORE_INDEX, answer_token_ce, token_cross_entropy
from ..utils import pad


@dataclass(frozen=True)
class Norm:
    """Global normalisers of one optimizer step (all micro-batches, all processes), so that gradient accumulation
    and the number of processes do not change the loss: ``tokens`` supervised tokens, ``examples`` examples, and
    ``counts[name]``, the sum of any further ``n_<name>`` count the rendered examples carry (e.g. CODI's teacher
    tokens)."""

    tokens: int
    examples: int
    counts: dict[str, int] = field(default_factory=dict)


def step_norm(items: list[dict], indices: list[int]) -> Norm:
    """The :class:`Norm` of the step made of ``items[i] for i in indices``: ``n_target`` sums to ``tokens``."""
    names = [k for k in items[indices[0]] if k.startswith("n_") and k != "n_target"]
    return Norm(tokens=sum(items[i]["n_target"] for i in indices), examples=len(indices),
                counts={k[2:]: sum(items[i][k] for i in indices) for k in names})


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rendered examples into tensors: input_ids, attention_mask, labels (IGNORE_INDEX on padding).

    Extra per-example integer fields (e.g. ``index``) are stacked as 1-D tensors.
    """
    ids, mask = pad([it["input_ids"] for it in items], pad_id)
    labels, _ = pad([it["labels"] for it in items], IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in items[0]:
        if key not in batch and isinstance(items[0][key], int):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
    return batch


def causal_lm_loss(model, batch: dict[str, torch.Tensor], norm: Norm,
                   state=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token cross-entropy on the supervised positions, summed and divided by the step's global token count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = token_cross_entropy(logits[:, :-1], batch["labels"][:, 1:], num_tokens=norm.tokens)
    return loss, {"ce": loss.detach(), **answer_parts(logits[:, :-1], batch["labels"][:, 1:], batch, norm)}


def answer_parts(logits, labels, batch: dict, norm: Norm) -> dict[str, torch.Tensor]:
    """``ce_ans1 .. ce_ansN``: the cross-entropy of each answer token (aligned ``logits``/``labels``), when the batch
    carries ``answer_len`` (the training loop sets it when every training answer has the same number of tokens,
    e.g. the 2N digits of an NxN product); else nothing."""
    if "answer_len" not in batch:
        return {}
    ce = answer_token_ce(logits, labels, int(batch["answer_len"][0]), norm.examples)
    return {f"ce_ans{j + 1}": v for j, v in enumerate(ce)}


def plain_prompt(example, tokenizer, cfg) -> list[int]:
    """``prompt`` of explicit methods: ``[bos] question ||``, then plain greedy decoding."""
    return segments(example, tokenizer, cfg.model.chat_template).prompt


def plain_lm(lm, tokenizer, cfg, checkpoint=None):
    """``wrap`` of methods that train the language model itself."""
    return lm


def no_generation_kwargs(module, tokenizer) -> dict:
    """``generation_kwargs`` of explicit methods: plain greedy decoding."""
    return {}


def no_training_setup(module, cfg, train_set, device=None) -> None:
    """``setup_training`` of methods that need nothing beyond the data: no state."""
    return None


def no_extra_tensors(module) -> None:
    """``extra_tensors`` of methods whose checkpoint is the language model alone."""
    return None


def no_card_lines(cfg: Config) -> list[str]:
    """``card`` of methods whose model card needs no line of their own."""
    return []


@dataclass(frozen=True)
class Method:
    """One method's protocol (see ``lori.methods``): a name, how it renders an example, and the parts that differ
    from a plain causal-LM fine-tune; the defaults are that fine-tune's."""

    name: str
    render: Callable
    paper: str  # what the method is in one line, with its paper (the model card's "Method" line)
    prompt: Callable = plain_prompt
    collate: Callable = collate
    wrap: Callable = plain_lm
    setup_training: Callable = no_training_setup
    loss: Callable = causal_lm_loss
    generation_kwargs: Callable = no_generation_kwargs
    extra_tensors: Callable = no_extra_tensors
    card: Callable[[Config], list[str]] = no_card_lines  # card(cfg): the method's own lines of the model card
    # What the method needs, declared so the commands never branch on its name: a latent method's Thoughts (K and the
    # projector; named, not imported, as thoughts.py imports this module); None: an explicit method
    thoughts: object | None = None
    # trains against the teacher statistics `lori precompute` writes (lori.teacher, lori.cache_dir): LoRi
    teacher_cache: bool = False
    # renders differently at each curriculum stage; False: every stage renders alike, so a curriculum would only
    # reset the optimizer (the pipeline gives such a student none)
    curriculum: bool = True
