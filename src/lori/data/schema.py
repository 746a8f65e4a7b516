"""The one example schema every reader produces and every method renders."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Rationale steps: GSM8k-Aug style `<<a=b>> <<c=d>>` notes, or multiplication partial products `... + ... ( ... )`.
_NOTE_BOUNDARY = re.compile(r"(?<=>>) (?=<<)")
_PARTIAL_BOUNDARY = re.compile(r" (?=\+ )")


def split_steps(rationale: str) -> tuple[str, ...]:
    """Split a rationale into steps such that ``" ".join(steps) == rationale.strip()``.

    Boundaries: between two calculator notes (``>> <<``) when the rationale is made of notes (a ``+`` inside a note
    never splits it), otherwise before each `` + `` (multiplication partial sums).
    """
    rationale = rationale.strip()
    if not rationale:
        return ()
    return tuple((_NOTE_BOUNDARY if "<<" in rationale else _PARTIAL_BOUNDARY).split(rationale))


@dataclass(frozen=True)
class Example:
    """One problem: a question, rationale steps (possibly none) and the gold answer string.

    ``source`` is ``"path:line"`` (or a generator description) so that every error can point at the input.
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    source: str = ""

    @property
    def rationale(self) -> str:
        return " ".join(self.steps)

    def to_icot_line(self) -> str:
        """The iCoT line format: ``question||steps #### answer``."""
        return f"{self.question}||{self.rationale} #### {self.answer}"
