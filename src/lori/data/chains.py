"""Multi-step arithmetic over named variables ("chains"): the reasoning-depth task, written like GSM8k-Aug.

One problem, L = 4 steps, modulus 10, value-only rationale::

    a = 3 ; b = a + 5 ; c = b * 3 ; d = c - a ; e = d + 4 ; ? e||<< b = 8 >> << c = 4 >> << d = 1 >> << e = 5 >> #### 5

Every value is taken mod ``modulus``; step k defines the next letter from the previous variable (``v_k = v_(k-1) op
x``, so the answer needs all L steps in order), ``+``/``-`` may look back to an earlier variable (``back_ref``),
``*`` multiplies by a constant coprime with the modulus, and the last step adds a fresh constant, so the answer is
exactly uniform (chance ``1/m``). The rule and why these defaults: docs/data.md (Generators). :func:`generate` is
deterministic for its seed, never repeats a question and never emits an excluded one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from lori.data.schema import Example, split_steps
from lori.errors import LoriError

NAMES = "abcdefghijklmnopqrstuvwxyz"
OPS = "+-*"
RATIONALE_FORMS = ("value", "expression")
MAX_STEPS = len(NAMES) - 1


def _apply(op: str, x: int, y: int, m: int) -> int:
    return (x + y) % m if op == "+" else (x - y) % m if op == "-" else (x * y) % m


def check_options(steps: int, modulus: int, ops: str, back_ref: float, rationale: str) -> None:
    """Refuse knobs the generator cannot honour, naming the config field."""
    if not 1 <= steps <= MAX_STEPS:
        raise LoriError(f"data.chain_steps must be in 1..{MAX_STEPS} (one letter per variable), got {steps}")
    if modulus < 2:
        raise LoriError(f"data.chain_modulus must be >= 2, got {modulus}")
    if not ops or any(o not in OPS for o in ops) or len(set(ops)) != len(ops):
        raise LoriError(f"data.chain_ops must be distinct characters of {OPS!r}, e.g. '+-*', got {ops!r}")
    if not 0 <= back_ref <= 1:
        raise LoriError(f"data.chain_back_ref must be in [0, 1], got {back_ref}")
    if rationale not in RATIONALE_FORMS:
        raise LoriError(f"data.chain_rationale must be one of {', '.join(RATIONALE_FORMS)}, got {rationale!r}")


def sample(rng: random.Random, steps: int, modulus: int, ops: str, back_ref: float, rationale: str,
           source: str) -> Example:
    """One problem drawn with ``rng`` (see the module docstring for the rule)."""
    m = modulus
    units = [u for u in range(1, m) if math.gcd(u, m) == 1]
    values = [rng.randrange(m)]
    question = [f"a = {values[0]}"]
    notes = []
    for k in range(1, steps + 1):
        prev, name = NAMES[k - 1], NAMES[k]
        last = k == steps
        op = rng.choice(("".join(o for o in "+-" if o in ops) or "+-") if last else ops)
        if op == "*":
            operand_text, operand = None, rng.choice(units)
        elif not last and k >= 2 and rng.random() < back_ref:
            i = rng.randrange(k - 1)
            operand_text, operand = NAMES[i], values[i]
        else:
            operand_text, operand = None, rng.randrange(m)
        value = _apply(op, values[-1], operand, m)
        question.append(f"{name} = {prev} {op} {operand_text if operand_text is not None else operand}")
        notes.append(f"<< {name} = {value} >>" if rationale == "value"
                     else f"<< {name} = {values[-1]} {op} {operand} = {value} >>")
        values.append(value)
    text = " ; ".join(question) + f" ; ? {NAMES[steps]}"
    return Example(text, split_steps(" ".join(notes)), str(values[-1]), source)


def generate(count: int, seed: int, steps: int = 4, modulus: int = 10, ops: str = OPS, back_ref: float = 0.0,
             rationale: str = "value", exclude: Iterable[Example] = ()) -> list[Example]:
    """``count`` distinct problems, deterministic for ``seed``; none whose question is in ``exclude``.

    Raises :class:`LoriError` when the space of problems is too small for ``count`` (short chains, small moduli)."""
    check_options(steps, modulus, ops, back_ref, rationale)
    if count < 0:
        raise LoriError(f"count must be >= 0, got {count}")
    seen = {ex.question for ex in exclude}
    rng = random.Random(f"chains:{seed}:{steps}:{modulus}:{ops}:{back_ref}")
    source = (f"generated:chains:L={steps}:m={modulus}:ops={ops}:back_ref={back_ref}:{rationale}:seed={seed}")
    out: list[Example] = []
    misses = 0
    while len(out) < count:
        ex = sample(rng, steps, modulus, ops, back_ref, rationale, source)
        if ex.question in seen:
            misses += 1
            if misses > 20 * count + 1000:
                raise LoriError(f"cannot generate {count} distinct {steps}-step chains mod {modulus} (ops {ops!r}): "
                                f"the space is too small beside {len(seen)} problems already drawn or excluded; "
                                "lower the count, or raise data.chain_steps or data.chain_modulus")
            continue
        seen.add(ex.question)
        out.append(ex)
    return out


def intermediate_values(example: Example) -> list[int]:
    """The value written in each rationale step (``<< v = ... = 7 >>`` -> 7), in order: the per-step targets of
    the latent-step probe."""
    vals = []
    for step in example.steps:
        step = step.strip()
        if not (step.startswith("<<") and step.endswith(">>")):
            raise ValueError(f"{example.source}: step {step!r} is not a << ... = v >> note")
        vals.append(int(step.removeprefix("<<").removesuffix(">>").split()[-1]))
    return vals
