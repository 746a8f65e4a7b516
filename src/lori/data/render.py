"""The shared written form of an example, as token ids: ``[bos] question || rationale #### answer <eos>``.

Segments: ``prompt`` = ``[bos] question ||``; ``rationale``; ``answer`` = ``#### answer <eos>``, whose first
``marker_len`` tokens are the ``####`` marker. The last marker token is the **answer anchor**: the position whose
next token starts the answer (method.md, LoRi piece 2).

Every method renders from these three segments, so all methods see the same text and every generation ends in
``#### answer`` — which is what the one answer-matching policy (``lori.tasks``) reads. Segments are encoded
separately so their boundaries are exact for any tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .schema import Example

IGNORE = -100  # label of a position that is not supervised


@dataclass(frozen=True)
class Segments:
    prompt: list[int]  # [bos] question ||
    rationale: list[int]  # the steps (may be empty)
    answer: list[int]  # #### answer <eos>
    marker_len: int  # tokens of the " ####" marker at the start of ``answer``


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


CHAT_FLAG = "lori_chat_template"  # tokenizer attribute set from model.chat_template (set_chat_template)


def set_chat_template(tokenizer: PreTrainedTokenizerBase, enabled: bool) -> None:
    """``model.chat_template``: when enabled, :func:`segments` wraps the question in the tokenizer's chat template.

    It travels as an attribute of the tokenizer, because every method's ``render``/``prompt`` receives the tokenizer
    (training, precompute and evaluation all set it from the run's config)."""
    if enabled and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.chat_template=true, but the tokenizer has no chat template")
    setattr(tokenizer, CHAT_FLAG, bool(enabled))


def segments(example: Example, tokenizer: PreTrainedTokenizerBase) -> Segments:
    if getattr(tokenizer, CHAT_FLAG, False):
        # The question is the user turn; the assistant turn opens with `||` and continues as without a template.
        # The template writes its own special tokens (BOS included where it has one), so none is added here.
        text = tokenizer.apply_chat_template([{"role": "user", "content": example.question}], tokenize=False,
                                             add_generation_prompt=True)
        prompt = encode(tokenizer, f"{text}||")
    else:
        prompt = encode(tokenizer, f"{example.question} ||")
        if tokenizer.bos_token_id is not None:
            prompt = [tokenizer.bos_token_id] + prompt
    rationale = encode(tokenizer, " " + example.rationale) if example.steps else []
    marker = encode(tokenizer, " ####")
    answer = marker + encode(tokenizer, f" {example.answer}") + [tokenizer.eos_token_id]
    return Segments(prompt, rationale, answer, len(marker))


def supervised(prefix: list[int], target: list[int]) -> dict[str, list[int]]:
    """``input_ids = prefix + target`` with labels only on ``target`` (labels[t] is the token at t; the loss shifts)."""
    return {"input_ids": prefix + target, "labels": [IGNORE] * len(prefix) + target, "n_target": len(target)}
