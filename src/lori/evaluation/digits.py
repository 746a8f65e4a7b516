"""Per-digit accuracy of digit-string answers (multiplication): a diagnostic beside the exact match, for students
that get no problem fully right. The digit rule is :meth:`lori.tasks.DigitStringTask.digit_matches` (place i of
the gold against place i of the prediction; iCoT writes the least significant digit first)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoriError


@dataclass(frozen=True)
class DigitShares:
    problems: int
    exact: float  # share of problems scored correct by the task's matching policy
    digits: float  # share of all gold digits right at their place
    per_place: list[float]  # share right at place 1, 2, ... (over the problems whose gold has that place)


def read_predictions(path: str | Path) -> list[dict]:
    """The lines of a ``predictions-*.jsonl`` file that ``lori eval`` / ``lori compare`` write."""
    path = Path(path)
    if not path.is_file():
        raise LoriError(f"no such predictions file: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            p = json.loads(line)
            if not isinstance(p, dict) or not {"generated", "gold", "correct"} <= set(p):
                raise ValueError("needs generated, gold and correct")
        except ValueError as e:
            raise LoriError(f"{path}:{n}: not a prediction line of lori eval ({e})") from None
        out.append(p)
    if not out:
        raise LoriError(f"{path}: no predictions")
    return out


def _place_means(rows: list[list[float]]) -> list[float]:
    """Mean of column i over the rows that have a column i, for every i (rows of unequal length)."""
    width = max(len(r) for r in rows)
    return [sum(r[i] for r in rows if i < len(r)) / sum(i < len(r) for r in rows) for i in range(width)]


def digit_shares(predictions: Iterable[dict], task) -> DigitShares:
    """Exact, all-digit and per-place shares of ``predictions`` (dicts with generated, gold, correct) under
    ``task`` (a task with ``digit_matches``)."""
    matches, exact = [], 0
    for p in predictions:
        matches.append(task.digit_matches(p["generated"], p["gold"]))
        exact += bool(p["correct"])
    if not matches:
        raise LoriError("digit_shares: no predictions")
    return DigitShares(problems=len(matches), exact=exact / len(matches),
                       digits=sum(map(sum, matches)) / sum(map(len, matches)), per_place=_place_means(matches))


def mean_shares(shares: list[DigitShares]) -> DigitShares:
    """The plain mean of several runs' shares (e.g. over seeds; every run scored on the same problems)."""
    k = len(shares)
    return DigitShares(problems=shares[0].problems, exact=sum(s.exact for s in shares) / k,
                       digits=sum(s.digits for s in shares) / k, per_place=_place_means([s.per_place for s in shares]))


def digit_table(shares: dict[str, DigitShares]) -> str:
    """A Markdown table: label, problems, exact %, digits %, then % per place (d1 = least significant)."""
    places = max(len(s.per_place) for s in shares.values())
    lines = ["| predictions | n | exact % | digits % | " + " | ".join(f"d{i + 1} %" for i in range(places)) + " |",
             "|---|---:|---:|---:|" + "---:|" * places]
    for label, s in shares.items():
        cells = [f"{100 * x:.1f}" for x in s.per_place] + [""] * (places - len(s.per_place))
        lines.append(f"| {label} | {s.problems} | {100 * s.exact:.1f} | {100 * s.digits:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
