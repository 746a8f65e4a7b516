"""Benchmarks as tasks, and THE one answer-matching policy used for every method (each ends with ``#### answer``;
EOS is stripped before matching):

1. Take the text after the FIRST ``####`` in the generation. No ``####`` -> no answer -> wrong.
2. ``multiplication``: the whitespace-normalised digit string must equal the gold exactly (iCoT's rule).
3. Numeric tasks (``gsm8k`` and GSM8k-Aug, ``gsm8k-hard``, ``svamp``, ``multiarith``, ``chains``): the FIRST number
   in that text (optional sign and leading ``$``, commas only as thousands separators, optional decimals; a trailing
   ``.`` or ``%`` and any text after it ignored), correct iff ``|pred - gold| <= 1e-4`` in exact decimal arithmetic.

iCoT and Coconut compare the exact string after ``####``; CODI takes the last number anywhere in the generation. Why
ours differs: docs/evaluation.md (Answer matching).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

from lori.errors import ConfigError, LoriError

ANSWER_MARKER = "####"
ABS_TOL = Decimal("1e-4")

# One number: optional sign, optional `$` (either side of the sign), then either a comma-grouped
# integer (`1,234,567`) or plain digits, then optional decimals; or a bare `.5`.
_NUMBER = re.compile(
    r"(?P<sign1>[-+\u2212]?)\$?(?P<sign2>[-+\u2212]?)"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_DIGIT_STRING = re.compile(r"\d+(?: \d+)*")


def answer_text(generated_text: str) -> str | None:
    """The text after the first ``####`` (stripped), or None if there is no ``####``."""
    _, sep, tail = generated_text.partition(ANSWER_MARKER)
    if not sep:
        return None
    return tail.strip()


def _to_decimal(match: re.Match) -> Decimal:
    signs = (match["sign1"] + match["sign2"]).replace("\u2212", "-")
    value = Decimal(match["body"].replace(",", ""))
    return -value if signs.count("-") % 2 else value


def _canonical(value: Decimal) -> str:
    """``Decimal`` -> shortest plain string: ``1000``, ``-2.5``, ``0`` (never ``1E+3`` or ``-0``)."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def first_number(text: str) -> Decimal | None:
    """The first number in ``text`` under the policy's number syntax, or None."""
    match = _NUMBER.search(text)
    return _to_decimal(match) if match else None


@runtime_checkable
class Task(Protocol):
    name: str
    numeric: bool

    def normalize(self, answer: str) -> str: ...

    def extract_answer(self, generated_text: str) -> str | None: ...

    def is_correct(self, generated_text: str, gold: str) -> bool: ...


@dataclass(frozen=True)
class DigitStringTask:
    """Exact digit-string match after ``####`` (iCoT's rule, used for multi-digit multiplication).

    Gold and prediction are digit groups separated by whitespace (iCoT writes the product least-
    significant digit first, one digit per token: ``7 8 0 3 7 8 8 1``). Whitespace is normalised
    to single spaces; anything else must match exactly, so extra text after the answer is wrong.
    """

    name: str
    rule: str = "exact whitespace-normalised digit string after the first '####' (iCoT)"
    numeric: bool = field(default=False, init=False)

    def normalize(self, answer: str) -> str:
        """Canonical gold form; raises LoriError if ``answer`` is not a digit string."""
        text = " ".join(str(answer).split())
        if not _DIGIT_STRING.fullmatch(text):
            raise LoriError(f"task {self.name!r}: gold answer {answer!r} is not a space-separated digit string")
        return text

    def extract_answer(self, generated_text: str) -> str | None:
        """The normalised digit string after the first ``####``; None if missing or not digits only."""
        text = answer_text(generated_text)
        if text is None:
            return None
        text = " ".join(text.split())
        return text if _DIGIT_STRING.fullmatch(text) else None

    def is_correct(self, generated_text: str, gold: str) -> bool:
        pred = self.extract_answer(generated_text)
        return pred is not None and pred == self.normalize(gold)

    def digit_matches(self, generated_text: str, gold: str) -> list[bool]:
        """Per gold digit group, in the gold's order (iCoT: least significant first), whether the prediction has
        the same group at the same place; a missing or non-digit answer matches nothing. A diagnostic beside the
        exact match, which stays the only accuracy."""
        gold_groups = self.normalize(gold).split()
        pred = answer_text(generated_text)
        pred_groups = pred.split() if pred is not None else []
        return [i < len(pred_groups) and pred_groups[i] == g for i, g in enumerate(gold_groups)]


@dataclass(frozen=True)
class NumericTask:
    """First number after ``####``, compared as a number with absolute tolerance 1e-4.

    Accepted number syntax: optional sign, optional leading ``$``, commas as thousands separators,
    optional decimals; a trailing ``.``/``%`` and any later text are ignored. Gold strings such as
    ``"1,000"``, ``"-9867630.0"`` (GSM-Hard) or ``"2.5"`` are normalised the same way.
    """

    name: str
    rule: str = "first number after the first '####', |pred - gold| <= 1e-4 (ours; see module docstring)"
    numeric: bool = field(default=True, init=False)

    def normalize(self, answer: str | int | float) -> str:
        """Canonical form (``"1,000"`` -> ``"1000"``, ``"-2.50"`` -> ``"-2.5"``, ``39.0`` -> ``"39"``).

        The whole string must be one number (surrounding ``$``, ``.``, ``%`` and whitespace allowed);
        raises LoriError otherwise, so that bad gold data is never silently scored as wrong.
        """
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = format(answer, "f")
        text = str(answer).strip()
        match = _NUMBER.match(text)
        rest = text[match.end():] if match else text
        if match is None or rest not in ("", ".", "%"):
            raise LoriError(f"task {self.name!r}: gold answer {answer!r} is not a number")
        return _canonical(_to_decimal(match))

    def extract_answer(self, generated_text: str) -> str | None:
        """The canonical first number after the first ``####``; None if there is none."""
        text = answer_text(generated_text)
        if text is None:
            return None
        value = first_number(text)
        return None if value is None else _canonical(value)

    def is_correct(self, generated_text: str, gold: str) -> bool:
        pred = self.extract_answer(generated_text)
        if pred is None:
            return False
        try:
            return abs(Decimal(pred) - Decimal(self.normalize(gold))) <= ABS_TOL
        except InvalidOperation:  # pragma: no cover - both sides are canonical numbers
            return False


TASKS: dict[str, Task] = {
    "multiplication": DigitStringTask("multiplication"),
    "gsm8k": NumericTask("gsm8k"),  # also GSM8k-Aug: same test questions and answers
    "gsm8k-hard": NumericTask("gsm8k-hard"),
    "svamp": NumericTask("svamp"),
    "multiarith": NumericTask("multiarith"),
    "chains": NumericTask("chains"),  # generated multi-step arithmetic mod m (lori.data.chains)
}

_ALIASES = {"gsm8k-aug": "gsm8k", "gsm-hard": "gsm8k-hard", "gsmhard": "gsm8k-hard"}


def get_task(name: str) -> Task:
    """Look up a task by name (a few aliases such as ``gsm8k-aug`` allowed); ConfigError if unknown."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; allowed: {', '.join(TASKS)} (aliases: {', '.join(_ALIASES)})")
    return TASKS[key]


