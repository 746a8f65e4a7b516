"""Multi-digit multiplication problems in the iCoT format, byte-identical to the published files.

Format (da03/Internalize_CoT_Step_by_Step ``data/N_by_N_mult``), one problem per line::

    a0 a1 .. a(n-1) * b0 b1 .. b(m-1)||P0 + P1 ( S1 ) + P2 ( S2 ) ... + P(m-1) #### c0 c1 .. c(n+m-1)

Every number is written least-significant digit first, one digit per token: ``Pi = a * b_i * 10**i`` with exactly
``n + 1 + i`` digits, ``Si = P0 + ... + Pi`` (``1 <= i <= m - 2``) at ``Pi``'s width, the answer with exactly
``n + m`` digits (docs/data.md has the whole rule, verified on every line of the 4x4 to 9x9 valid/test files).
:func:`generate` samples operands as the published ones (exactly ``n`` / ``m`` digits, leading digit 1-9) and never
repeats a pair or emits an excluded one (pass the valid and test files as ``exclude``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from lori.data.schema import Example, split_steps
from lori.errors import LoriError

# Above this many candidate pairs, sample by rejection instead of enumerating the whole space.
_ENUMERATE_LIMIT = 2_000_000


def _digits(value: int, width: int) -> str:
    """``value`` as ``width`` digits, least-significant first, space separated (``_digits(18, 3) == "8 1 0"``)."""
    text = str(value).rjust(width, "0")
    if len(text) != width:
        raise AssertionError(f"{value} does not fit in {width} digits")
    return " ".join(reversed(text))


def _parse_operand(digits: str, name: str) -> tuple[int, int]:
    """Operand text as written (LSB first, space separated) -> (value, width)."""
    tokens = digits.split()
    if not tokens or not all(len(t) == 1 and t in "0123456789" for t in tokens):
        raise LoriError(
            f"multiplication operand {name}={digits!r} is not a list of single digits "
            "(expected least-significant digit first, separated by spaces, e.g. '7 6 9 2')"
        )
    return int("".join(reversed(tokens))), len(tokens)


def _render(a: int, n: int, b: int, m: int, source: str) -> Example:
    b_digits = [int(c) for c in reversed(str(b).rjust(m, "0"))]
    parts: list[str] = []
    total = 0
    for i, digit in enumerate(b_digits):
        partial = a * digit * 10**i
        total += partial
        width = n + 1 + i
        text = _digits(partial, width)
        if i == 0:
            parts.append(text)
        elif i < m - 1:
            parts.append(f"+ {text} ( {_digits(total, width)} )")
        else:
            parts.append(f"+ {text}")
    question = f"{_digits(a, n)} * {_digits(b, m)}"
    return Example(question, split_steps(" ".join(parts)), _digits(a * b, n + m), source)


def make_example(a_digits: str, b_digits: str, source: str = "generated:multiplication") -> Example:
    """The full problem for two operands written as in the files: LSB first, space separated (``"7 6 9 2"``).

    The operand widths are taken as written (a zero most-significant digit is kept).
    """
    a, n = _parse_operand(a_digits, "a")
    b, m = _parse_operand(b_digits, "b")
    return _render(a, n, b, m, source)


def operands(example: Example) -> tuple[str, str]:
    """The two operands of a multiplication example's question, as written (``("7 6 9 2", "1 6 3 6")``)."""
    left, sep, right = example.question.partition(" * ")
    if not sep:
        raise LoriError(
            f"{example.source or 'example'}: question {example.question[:60]!r} is not a multiplication problem "
            "(expected 'a0 a1 .. * b0 b1 ..')"
        )
    _parse_operand(left, "a")
    _parse_operand(right, "b")
    return " ".join(left.split()), " ".join(right.split())


def generate(n: int, m: int, count: int, seed: int, exclude: Iterable[Example] = ()) -> list[Example]:
    """``count`` distinct ``n``-digit by ``m``-digit problems, deterministic for ``seed``.

    Operands are uniform over numbers with exactly ``n`` (``m``) digits (non-zero most-significant digit), as in
    the published files. No pair (a, b) occurring in ``exclude`` is emitted (order matters: (a, b) and (b, a) are
    different problems, as in the files). Raises :class:`LoriError` if fewer than ``count`` pairs are available.
    """
    if n < 1 or m < 1:
        raise LoriError(f"multiplication sizes must be at least 1 digit, got {n}x{m}")
    if count < 0:
        raise LoriError(f"count must be >= 0, got {count}")
    lo_a, hi_a = 10 ** (n - 1), 10**n - 1
    lo_b, hi_b = 10 ** (m - 1), 10**m - 1
    space = (hi_a - lo_a + 1) * (hi_b - lo_b + 1)

    banned: set[tuple[int, int]] = set()
    for ex in exclude:
        a_text, b_text = operands(ex)
        a, a_width = _parse_operand(a_text, "a")
        b, b_width = _parse_operand(b_text, "b")
        if (a_width, b_width) == (n, m) and lo_a <= a and lo_b <= b:
            banned.add((a, b))
    available = space - len(banned)
    if count > available:
        raise LoriError(
            f"cannot generate {count} distinct {n}x{m} multiplication problems: only {available} pairs exist "
            f"({space} in all, {len(banned)} excluded); lower the count or use more digits"
        )

    rng = random.Random(seed)
    source = f"generated:multiplication:{n}x{m}:seed={seed}"
    pairs: list[tuple[int, int]]
    if space <= _ENUMERATE_LIMIT:
        candidates = [
            (a, b) for a in range(lo_a, hi_a + 1) for b in range(lo_b, hi_b + 1) if (a, b) not in banned
        ]
        pairs = rng.sample(candidates, count)
    else:
        seen = set(banned)
        pairs = []
        while len(pairs) < count:
            pair = (rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    return [_render(a, n, b, m, source) for a, b in pairs]
