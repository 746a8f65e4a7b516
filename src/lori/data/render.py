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
from ..losses.task import IGNORE_INDEX  # the label of a position that is not supervised: what the loss skips
from .schema import Example



@dataclass(frozen=True)
class Segments:
    prompt: list[int]  # [bos] question ||
    rationale: list[int]  # the steps (may be empty)
    answer: list[int]  # #### answer <eos>
    marker_len: int  # tokens of the " ####" marker at the start of ``answer``


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def check_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> None:
    """Refuse ``model.chat_template=true`` for a tokenizer without a chat template (checked when a model is opened,
    and again by :func:`segments`)."""
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.chat_template=true, but the tokenizer has no chat template")


def segments(example: Example, tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> Segments:
    """The three segments of ``example``; ``chat_template`` (``model.chat_template``, passed by every caller from the
    run's config) wraps the question in the tokenizer's chat template."""
    if chat_template:
        check_chat_template(tokenizer, chat_template)
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
    answer = marker + answer_ids(example, tokenizer) + [tokenizer.eos_token_id]
    return Segments(prompt, rationale, answer, len(marker))


def answer_ids(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The answer's own tokens: ``answer`` of :func:`segments` between the ``####`` marker and ``<eos>``."""
    return encode(tokenizer, f" {example.answer}")


def answer_anchor(s: Segments) -> int:
    """The position of the answer anchor (the last ``####`` token) in the explicit-CoT rendering ``prompt +
    rationale + answer``."""
    return len(s.prompt) + len(s.rationale) + s.marker_len - 1


def explicit_cot(s: Segments) -> dict[str, list[int]]:
    """The explicit-CoT rendering, ``prompt + rationale + answer`` supervised on rationale and answer: what CoT-SFT
    trains, CODI's teacher pass reads and the LoRi teacher's trajectories are taken from (its anchor:
    :func:`answer_anchor`)."""
    return supervised(s.prompt, s.rationale + s.answer)


def supervised(prefix: list[int], target: list[int]) -> dict[str, list[int]]:
    """``input_ids = prefix + target`` with labels only on ``target`` (labels[t] is the token at t; the loss shifts)."""
    return {"input_ids": prefix + target, "labels": [IGNORE_INDEX] * len(prefix) + target, "n_target": len(target)}
