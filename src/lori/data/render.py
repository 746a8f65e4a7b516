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


@dataclass(frozen=True)
class StepSpans:
    """Where each rationale step sits in the rationale's tokens (indices into ``Segments.rationale``)."""

    ends: tuple[int, ...]  # per step, the end (exclusive): the first token that starts after the step's text
    # per step, the token whose next token starts the step's result: where the teacher hands the value over
    # (lori.step_anchors); -1 when that is before the rationale or the result does not start at a token boundary
    handovers: tuple[int, ...]
    unlocated: tuple[int, ...] = ()  # steps whose result shares its first token with the text before it


def result_span(step: str) -> tuple[int, int]:
    """The characters of a step's result, ``[start, end)`` in ``step``: after the last ``=`` of a calculator note
    (``<<600*30/100=180>>``, ``<< b = 4 + 3 = 7 >>``), inside the last ``( ... )`` of a multiplication partial sum,
    after the ``+`` of the last partial product, else the whole step (a partial product, a bare value)."""
    body = step.rstrip()
    if body.endswith(">>"):
        body = body[:-2].rstrip()
    start, end = 0, len(body)
    if "=" in body:
        start = body.rindex("=") + 1
    elif body.endswith(")") and "(" in body:
        start, end = body.rindex("(") + 1, len(body[:-1].rstrip())
    elif body.startswith("+"):
        start = 1
    while start < end and body[start].isspace():
        start += 1
    return start, end


def hands_over(tokenizer: PreTrainedTokenizerBase, rationale: list[int], handover: int, step: str) -> bool:
    """Whether the rationale's text from the token after ``handover`` starts with ``step``'s result: the check that
    a hand-over is right, whatever rule chose it (tests, runs/handover_check.py)."""
    a, b = result_span(step)
    return handover >= 0 and tokenizer.decode(rationale[handover + 1:]).lstrip().startswith(step[a:b])


def step_spans(example: Example, tokenizer: PreTrainedTokenizerBase) -> StepSpans:
    """Each step's end and hand-over in the tokens of ``segments(...).rationale``, located through the tokenizer's
    character offsets, so they are right for any tokenizer (a BPE that splits ``300`` into three tokens included)."""
    if not example.steps:
        return StepSpans((), ())
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer {type(tokenizer).__name__} gives no character offsets (a 'fast' tokenizer "
                          "does): load the model's tokenizer with use_fast=True")
    text = " " + example.rationale
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # where each token's own text starts (byte-level BPE counts a leading space into the token)
    starts = [a + len(text[a:b]) - len(text[a:b].lstrip()) if b > a else a for a, b in offsets]
    ends, handovers, unlocated = [], [], []
    at = 1
    for k, step in enumerate(example.steps):
        step_end = at + len(step)
        r0, _ = result_span(step)
        r0 += at
        ends.append(sum(1 for st in starts if st < step_end))
        first = next((i for i, (a, b) in enumerate(offsets) if b > r0), None)
        if first is None or starts[first] != r0:
            handovers.append(-1)
            unlocated.append(k)
        else:
            handovers.append(first - 1)
        at = step_end + 1
    return StepSpans(tuple(ends), tuple(handovers), tuple(unlocated))


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
