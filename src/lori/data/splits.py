"""The train / valid / test splits a config names: read from files, or generated (multiplication, chains) when no
file is given. Generated splits never overlap: test is drawn first, valid excludes test, train excludes both.

Before a split is read, its file (and for the train split every file the config names, as a run validates and
tests on them) is checked cheaply: a file with no problem (empty, or blank lines only) is refused, and so is one
whose first problems contradict the generator's settings: ``data.digits`` (multiplication) or
``data.chain_steps`` (chains). Otherwise a 3x3 run with the 4x4 preset's files would train on 3x3 problems and
validate and test on 4x4 ones. Every gold answer of a file is checked by the task's own normaliser when the file
is read (a ``#### abc`` is one line naming the file and line, not a failure at the first scoring), and for the
train split the valid and test files are read too, so a run fails before it trains, not when it first evaluates."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..config import DataConfig
from ..errors import ConfigError, DataError, LoriError
from ..tasks import TASKS
from . import chains
from .multiplication import generate as generate_multiplication
from .readers import read_examples
from .schema import Example

SPLITS = ("train", "valid", "test")
_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}


HEAD_LINES = 5  # problems of a data file checked against the generator settings before it is read


def load_split(cfg: DataConfig, split: str) -> list[Example]:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    key = _key(cfg)
    for other in SPLITS if split == "train" else (split,):
        _check_file(key, other)
    if split == "train":  # every file's gold answers, before a run trains (_load checks them)
        for other in ("valid", "test"):
            if getattr(cfg, f"{other}_file") is not None:
                _load(key, other)
    return list(_load(key, split))


def _head(path: Path, n: int, field: str) -> list[tuple[int, str]]:
    """The first ``n`` non-blank lines of ``path`` with their 1-based numbers (undecodable bytes replaced: the
    reader reports them). ``field`` (``data.test_file``) is named when the file is missing."""
    if not path.exists():
        raise DataError(path, None, "file does not exist", f"{field} names it: check the path, or give "
                        f"{field}=PATH on the command line; data files are never downloaded silently")
    if not path.is_file():
        raise DataError(path, None, "not a regular file", f"{field} must name a data file")
    out = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                out.append((lineno, line.rstrip("\r\n")))
                if len(out) == n:
                    break
    return out


def _shape(task: str, line: str) -> tuple | None:
    """What a problem line says about the generator settings: ``(n, m)`` digits of a multiplication problem,
    ``(L,)`` steps of a chain; None when the line does not look like one (the reader then reports it)."""
    question = line.partition("||")[0].strip()
    if task == "multiplication":
        left, sep, right = question.partition(" * ")
        a, b = left.split(), right.split()
        if not sep or not a or not b or not all(len(t) == 1 and t.isdigit() for t in a + b):
            return None
        return len(a), len(b)
    if task == "chains":
        parts = [p.strip() for p in question.split(" ; ")]
        if len(parts) < 3 or not parts[-1].startswith("? "):
            return None
        return (len(parts) - 2,)
    return None


def _check_file(key: tuple, split: str) -> None:
    task, fmt, train_file, valid_file, test_file, digits, *_, chain = key
    path = {"train": train_file, "valid": valid_file, "test": test_file}[split]
    if path is None:
        return
    field = f"data.{split}_file"
    head = _head(Path(path), HEAD_LINES, field)
    if not head:
        raise DataError(path, None, "no problems: the file is empty or holds only blank lines",
                        f"{field} must name a file with at least one problem")
    if fmt != "icot" or task not in ("multiplication", "chains"):
        return
    want = tuple(digits) if task == "multiplication" else (chain[0],)
    for lineno, line in head:
        got = _shape(task, line)
        if got is None or got == want:
            continue
        if task == "multiplication":
            raise DataError(path, lineno, f"a {got[0]}x{got[1]} problem, but data.digits is [{want[0]}, {want[1]}]",
                            f"{field} must hold {want[0]}x{want[1]} problems like the generated splits: set "
                            f"data.digits=[{got[0]},{got[1]}], or {field} to a {want[0]}x{want[1]} file (null "
                            "generates one)")
        raise DataError(path, lineno, f"a {got[0]}-step chain, but data.chain_steps is {want[0]}",
                        f"{field} must hold {want[0]}-step chains like the generated splits: set "
                        f"data.chain_steps={got[0]}, or {field} to a {want[0]}-step file (null generates one)")


def _check_answers(examples: tuple[Example, ...], task: str, split: str) -> None:
    """Refuse a gold answer the task's policy cannot score (``#### abc`` for a numeric task), naming its line."""
    policy = TASKS.get(task)
    if policy is None:  # an unknown task is refused by name where the run starts
        return
    for ex in examples:
        try:
            policy.normalize(ex.answer)
        except LoriError:
            path, _, line = ex.source.rpartition(":")
            raise DataError(path, int(line) if line.isdigit() else None,
                            f"the gold answer {ex.answer!r} is not {'a number' if policy.numeric else 'a digit string'}",
                            f"the {task} task scores the {policy.rule.split(' (')[0]}; fix the line in data.{split}_file") \
                from None


def _key(cfg: DataConfig) -> tuple:
    return (cfg.task, cfg.format, cfg.train_file, cfg.valid_file, cfg.test_file, tuple(cfg.digits),
            cfg.train_size, cfg.valid_size, cfg.test_size, cfg.seed,
            (cfg.chain_steps, cfg.chain_modulus, cfg.chain_ops, cfg.chain_back_ref, cfg.chain_rationale))


@lru_cache(maxsize=8)
def _load(key: tuple, split: str) -> tuple[Example, ...]:
    task, fmt, train_file, valid_file, test_file, digits, train_size, valid_size, test_size, seed, chain = key
    path = {"train": train_file, "valid": valid_file, "test": test_file}[split]
    if path is not None:
        examples = tuple(read_examples(path, fmt))
        if task == "chains" and chain[4] == "values":
            examples = tuple(chains.values_steps(ex) for ex in examples)
        if not examples:  # a JSON list with no items (line formats are caught by _check_file)
            raise DataError(path, None, "no problems in the file", f"data.{split}_file must name a file with at "
                            "least one problem")
        _check_answers(examples, task, split)
        return examples
    if task not in ("multiplication", "chains"):
        raise ConfigError(f"data.{split}_file is required for task {task!r}; only multiplication and chains can be "
                          "generated")
    earlier = {"train": ("valid", "test"), "valid": ("test",), "test": ()}[split]
    exclude = [ex for other in earlier for ex in _load(key, other)]
    count = {"train": train_size, "valid": valid_size, "test": test_size}[split]
    if task == "chains":
        steps, modulus, ops, back_ref, rationale = chain
        return tuple(chains.generate(count, seed + _SEED_OFFSET[split], steps, modulus, ops, back_ref, rationale,
                                     exclude=exclude))
    return tuple(generate_multiplication(digits[0], digits[1], count, seed + _SEED_OFFSET[split], exclude=exclude))
