"""Readers for the benchmark file formats; each returns ``list[Example]`` with ``source="path:line"``.

The format is always named by the caller, never guessed from the path: ``icot`` (``question||rationale #### answer``
per line, answers kept exactly as written so ``example.to_icot_line()`` reproduces the published files), ``gsm8k``
(JSON lines; the steps are the ``<<...>>`` calculator notes in order), ``svamp`` (one JSON list; question = body +
question, the step the equation; ``source`` counts items, not lines), ``multiarith`` and ``gsm8k-hard`` (JSON
lines, no steps). Numeric answers go through :func:`format_number`. What each format keeps and drops, and why:
docs/data.md (Formats).

Blank (whitespace-only) lines are skipped in line-based formats; line numbers in errors are 1-based and count them.
A file that starts with a UTF-8 byte-order mark is refused (it would glue to the first question), naming line 1.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from lori.utils import atomic_write_text

from lori.data.schema import Example, split_steps
from lori.errors import DataError, LoriError

PathLike = str | os.PathLike[str]

ICOT_FORMAT = "expected 'question||rationale #### answer' (iCoT format, one problem per line)"
_CALCULATOR_NOTE = re.compile(r"<<[^\n]*?>>")


def format_number(x: float | int) -> str:
    """Canonical answer text for a number: integral values without a decimal point, others as Python's shortest
    round-trip decimal, never in exponent notation (``51.0 -> "51"``, ``2.5 -> "2.5"``, ``-9867630.0 ->
    "-9867630"``, ``1e-05 -> "0.00001"``). Raises ``ValueError`` for NaN, infinities and booleans."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"not a number: {x!r}")
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    if x.is_integer():
        return str(int(x))
    text = repr(x)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _open_text(path: Path) -> str:
    if not path.exists():
        raise DataError(path, None, "file does not exist", "check the path; data files are never downloaded silently")
    if not path.is_file():
        raise DataError(path, None, "not a regular file")
    try:
        # Universal newlines: '\r\n' files read like '\n' files.
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if text.startswith("\ufeff"):
        raise DataError(path, 1, "the file starts with a UTF-8 byte-order mark (U+FEFF), which would be read as part "
                        "of the first problem", "save it as UTF-8 without a BOM, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE")
    return text


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for every non-blank line; the last newline is optional."""
    for lineno, line in enumerate(_open_text(path).split("\n"), start=1):
        if line.strip():
            yield lineno, line


def _parse_json(text: str, path: Path, lineno: int | None, expected: str) -> Any:
    """``json.loads`` whose every failure is a DataError: bad syntax, but also an integer with more digits than
    Python converts (a plain ValueError) and nesting deeper than the parser's recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = exc.lineno if lineno is None else lineno
        raise DataError(path, line, f"invalid JSON: {exc.msg} at column {exc.colno}", expected) from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(path, lineno, f"unreadable JSON: {str(exc).split(';')[0]:.100}", expected) from None


def _json_lines(path: Path, keys: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parse each non-blank line as a JSON object that has all ``keys``."""
    expected = "expected one JSON object per line with keys " + ", ".join(repr(k) for k in keys)
    for lineno, line in _lines(path):
        obj = _parse_json(line, path, lineno, expected)
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"a JSON {type(obj).__name__}, not an object", expected)
        missing = [k for k in keys if k not in obj]
        if missing:
            raise DataError(path, lineno, f"missing key(s) {', '.join(repr(k) for k in missing)}", expected)
        yield lineno, obj


def _string(path: Path, line: int | None, obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, line, f"{where}{key!r} must be a non-empty string, got {value!r:.60}")
    return value.strip()


def _number(path: Path, line: int | None, obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj[key]
    try:
        return format_number(value)
    except ValueError as exc:
        raise DataError(path, line, f"{where}{key!r} must be a finite number, got {value!r:.60}") from exc


def read_icot(path: PathLike) -> list[Example]:
    """Read ``question||rationale #### answer`` lines (see the module docstring).

    The question is the text before ``||``, the rationale the text between ``||`` and the last ``####``
    (split into steps by :func:`split_steps`), the answer the text after it; question and answer are stripped.
    """
    path = Path(path)
    examples = []
    for lineno, line in _lines(path):
        question, sep, rest = line.partition("||")
        if not sep:
            raise DataError(path, lineno, "no '||' between question and rationale", ICOT_FORMAT)
        if "||" in rest:
            raise DataError(path, lineno, "more than one '||'", ICOT_FORMAT)
        rationale, sep, answer = rest.rpartition("####")
        if not sep:
            raise DataError(path, lineno, "no ' #### ' before the answer", ICOT_FORMAT)
        question, answer = question.strip(), answer.strip()
        if not question:
            raise DataError(path, lineno, "empty question", ICOT_FORMAT)
        if not answer:
            raise DataError(path, lineno, "empty answer after '####'", ICOT_FORMAT)
        examples.append(Example(question, split_steps(rationale), answer, f"{path}:{lineno}"))
    return examples


def read_gsm8k_jsonl(path: PathLike) -> list[Example]:
    """Read GSM8K ``{"question", "answer"}`` lines; steps are the ``<<...>>`` calculator notes (module docstring)."""
    path = Path(path)
    examples = []
    for lineno, obj in _json_lines(path, ("question", "answer")):
        question = _string(path, lineno, obj, "question")
        solution = _string(path, lineno, obj, "answer")
        reasoning, sep, answer = solution.rpartition("####")
        answer = answer.strip().replace(",", "")
        if not sep or not answer:
            raise DataError(
                path, lineno, "the 'answer' text has no final '#### <number>' line", "GSM8K format: '... #### 72'"
            )
        steps = tuple(_CALCULATOR_NOTE.findall(reasoning))
        examples.append(Example(question, steps, answer, f"{path}:{lineno}"))
    return examples


def read_svamp_json(path: PathLike) -> list[Example]:
    """Read the SVAMP JSON list (module docstring). Errors name the 1-based item index and its ID."""
    path = Path(path)
    expected = "expected a JSON list of objects with keys 'Body', 'Question', 'Equation', 'Answer'"
    items = _parse_json(_open_text(path), path, None, expected)
    if not isinstance(items, list):
        raise DataError(path, None, f"top level is a JSON {type(items).__name__}, not a list", expected)
    examples = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(path, None, f"item {index} is a JSON {type(item).__name__}, not an object", expected)
        where = f"item {index} (ID {item.get('ID', '?')}): "
        missing = [k for k in ("Body", "Question", "Equation", "Answer") if k not in item]
        if missing:
            raise DataError(path, None, f"{where}missing key(s) {', '.join(repr(k) for k in missing)}", expected)
        body = _string(path, None, item, "Body", where)
        question = _string(path, None, item, "Question", where)
        equation = _string(path, None, item, "Equation", where)
        answer = _number(path, None, item, "Answer", where)
        source = f"{path}:{index}"
        examples.append(Example(f"{body} {question}", (equation,), answer, source))
    return examples


def read_pal_jsonl(path: PathLike) -> list[Example]:
    """Read the JSON lines of reasoning-machines/pal, ``{"input", "target"}`` (MultiArith) or ``{"input", "code",
    "target"}`` (GSM8K-Hard; ``code`` is ignored): no steps (module docstring)."""
    path = Path(path)
    return [
        Example(_string(path, n, obj, "input"), (), _number(path, n, obj, "target"), f"{path}:{n}")
        for n, obj in _json_lines(path, ("input", "target"))
    ]


READERS: dict[str, Callable[[Path], list[Example]]] = {
    "icot": read_icot,
    "gsm8k": read_gsm8k_jsonl,
    "svamp": read_svamp_json,
    "multiarith": read_pal_jsonl,
    "gsm8k-hard": read_pal_jsonl,
}


def read_examples(path: PathLike, fmt: str) -> list[Example]:
    """Read ``path`` in the named format (a key of :data:`READERS`); the format is never inferred from the path."""
    path = Path(path)
    if fmt not in READERS:
        raise DataError(path, None, f"unknown data format {fmt!r}", "allowed formats: " + ", ".join(READERS))
    if not path.exists():
        raise DataError(path, None, "file does not exist", "check the path; data files are never downloaded silently")
    return READERS[fmt](path)


def write_icot(examples: Iterable[Example], path: PathLike) -> None:
    """Write examples as iCoT lines (``question||rationale #### answer``), one per line with a trailing newline.

    Atomic: written to a temporary file in the same folder, then moved over ``path`` with :func:`os.replace`.
    Raises :class:`LoriError` for an example that would not read back unchanged (a newline in any field, ``||`` in
    the question or rationale, ``####`` in the rationale or answer, an empty question or answer).
    """
    path = Path(path)
    lines = []
    for ex in examples:
        fields = (ex.question, ex.rationale, ex.answer)
        problem = None
        if any("\n" in f or "\r" in f for f in fields):
            problem = "a field contains a newline"
        elif "||" in ex.question or "||" in ex.rationale:
            problem = "question or rationale contains '||'"
        elif "####" in ex.rationale or "####" in ex.answer:
            problem = "rationale or answer contains '####'"
        elif not ex.question.strip() or not ex.answer.strip():
            problem = "empty question or answer"
        if problem:
            raise LoriError(f"{ex.source or 'example'}: cannot write as an iCoT line: {problem}")
        lines.append(ex.to_icot_line() + "\n")
    atomic_write_text(path, "".join(lines))
