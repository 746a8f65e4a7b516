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

from ..data.schema import Example

IGNORE = -100  # label of a position that is not supervised


@dataclass(frozen=True)
class Segments:
    prompt: list[int]  # [bos] question ||
    rationale: list[int]  # the steps (may be empty)
    answer: list[int]  # #### answer <eos>
    marker_len: int  # tokens of the " ####" marker at the start of ``answer``


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def segments(example: Example, tokenizer: PreTrainedTokenizerBase) -> Segments:
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
