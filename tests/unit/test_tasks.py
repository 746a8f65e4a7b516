"""Golden answer-extraction tests: the one matching policy, task by task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lori.tasks.matching as tasks_mod
from lori.errors import ConfigError, LoriError
from lori.tasks import TASKS, NumericTask, Task, get_task

from conftest import DATA, REPO

NUMERIC = ["gsm8k", "gsm8k-hard", "svamp", "multiarith"]


def test_task_registry():
    assert set(TASKS) == {"multiplication", "gsm8k", "gsm8k-hard", "svamp", "multiarith", "chains"}
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert task.name == name
        assert task.numeric is (name != "multiplication")
        assert type(task).__doc__ and task.rule
    assert get_task("gsm8k-aug") is TASKS["gsm8k"]
    assert get_task("GSM8K") is TASKS["gsm8k"]
    with pytest.raises(ConfigError, match="allowed: multiplication"):
        get_task("gsm9k")


def test_policy_is_documented():
    doc = tasks_mod.__doc__.lower()
    for needle in ("first ``####``", "icot", "coconut", "codi", "1e-4", "first number", "last number"):
        assert needle in doc


# ----------------------------------------------------------------------------------------- multiplication
MULT_GOLD = "7 8 0 3 7 8 8 1"
MULT_CASES = [
    # (generation, extracted, correct vs MULT_GOLD)
    ("7 6 9 2 0 + 0 2 0 8 7 1 ( 7 8 9 0 8 1 ) #### 7 8 0 3 7 8 8 1", MULT_GOLD, True),  # CoT then answer
    ("#### 7 8 0 3 7 8 8 1", MULT_GOLD, True),  # implicit: answer directly
    ("####   7 8  0 3\t7 8 8 1  ", MULT_GOLD, True),  # whitespace is normalised
    ("7 8 0 3 7 8 8 1", None, False),  # missing ####
    ("#### 7 8 0 3 7 8 8 1 done", None, False),  # extra text after the answer: exact rule
    ("#### 7 8 0 3 7 8 8", "7 8 0 3 7 8 8", False),  # a digit short
    ("#### 7 8 0 3 7 8 8 1 #### 7 8 0 3 7 8 8 1", None, False),  # text after the FIRST ####
    ("#### 7,8 0 3 7 8 8 1", None, False),  # no comma stripping for digit strings
    ("#### 78037881", "78037881", False),  # spacing between digit tokens matters
    ("####", None, False),  # empty answer
    ("#### $7 8 0 3 7 8 8 1", None, False),
]


@pytest.mark.parametrize("generated,extracted,correct", MULT_CASES)
def test_multiplication(generated, extracted, correct):
    task = TASKS["multiplication"]
    assert task.extract_answer(generated) == extracted
    assert task.is_correct(generated, MULT_GOLD) is correct


def test_multiplication_gold_validation():
    task = TASKS["multiplication"]
    assert task.normalize("  0 3 5\t9 0 6 5 0 ") == "0 3 5 9 0 6 5 0"
    with pytest.raises(LoriError, match="multiplication.*digit string"):
        task.normalize("0 3 x")


# ----------------------------------------------------------------------------------------- numeric tasks
# (generation, gold, extracted, correct)
NUMERIC_CASES = [
    ("<<16-3-4=9>> <<9*2=18>> #### 18", "18", "18", True),  # CoT rationale then answer
    ("#### 18", "18", "18", True),  # implicit
    ("#### 2,125", "2,125", "2125", True),  # commas in both
    ("#### 2125", "2,125", "2125", True),  # comma only in gold
    ("#### 1,450,000", "1450000", "1450000", True),
    ("#### -9867630", "-9867630.0", "-9867630", True),  # GSM-Hard float gold
    ("#### -9867630", "9867630", "-9867630", False),  # sign matters
    ("#### 2.5", "2.5", "2.5", True),  # decimals
    ("#### 2.50", "2.5", "2.5", True),
    ("#### 2.5002", "2.5", "2.5002", False),  # beyond 1e-4
    ("#### 2.5001", "2.5", "2.5001", True),  # exactly 1e-4 away: inclusive
    ("#### 2.50005", "2.5", "2.50005", True),  # within 1e-4
    ("#### $1,000.", "1,000", "1000", True),  # leading $, trailing .
    ("#### 50%", "50", "50", True),  # trailing %
    ("#### -$5", "-5", "-5", True),
    ("#### 18 apples and 3 pears", "18", "18", True),  # extra text after the answer
    ("#### The answer is 18.", "18", "18", True),  # words before the number
    ("<<9*2=18>> 18", "18", None, False),  # missing #### (a rationale number never counts)
    ("#### ", "18", None, False),  # no number after ####
    ("#### eighteen", "18", None, False),
    ("#### 17 #### 18", "18", "17", False),  # FIRST #### and FIRST number
    ("<<2*9=18>> #### 17", "18", "17", False),  # CODI's last-number rule would agree; first-after-#### too
    ("#### 18, 19", "18", "18", True),  # comma + space is not a thousands separator
    ("#### 1,0000", "10000", "1", False),  # malformed grouping: not a thousands separator
    ("#### 0.5", ".5", "0.5", True),
    ("#### 39", "39.0", "39", True),  # SVAMP float gold
    ("#### -0", "0", "0", True),
]


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("generated,gold,extracted,correct", NUMERIC_CASES)
def test_numeric(name, generated, gold, extracted, correct):
    task = TASKS[name]
    assert task.extract_answer(generated) == extracted
    assert task.is_correct(generated, gold) is correct


@pytest.mark.parametrize(
    "gold,canonical",
    [("1,000", "1000"), ("-9867630", "-9867630"), ("-9867630.0", "-9867630"), ("2.5", "2.5"),
     (" 72 ", "72"), ("$5", "5"), ("12.", "12"), ("0.10", "0.1"), ("+7", "7"), ("-0.0", "0"), ("-$1,234.50", "-1234.5")],
)
def test_numeric_normalize(gold, canonical):
    assert NumericTask("t").normalize(gold) == canonical


def test_numeric_normalize_accepts_numbers_and_rejects_garbage():
    task = TASKS["svamp"]
    assert task.normalize(39.0) == "39"
    assert task.normalize(-2.5) == "-2.5"
    assert task.normalize(7) == "7"
    for bad in ("", "abc", "18 apples", "1,0000", "5/2"):
        with pytest.raises(LoriError, match="svamp.*not a number"):
            task.normalize(bad)
    with pytest.raises(LoriError):  # bad gold is an error, never a silent "wrong"
        task.is_correct("#### 5", "five")


def test_large_integers_are_not_rounded():
    task = TASKS["gsm8k-hard"]
    assert not task.is_correct("#### 12345678901234567", "12345678901234568")
    assert task.is_correct("#### 12345678901234567", "12,345,678,901,234,567")


def test_extraction_is_idempotent():
    for name, task in TASKS.items():
        cases = MULT_CASES if name == "multiplication" else [(g, x, c) for g, _, x, c in NUMERIC_CASES]
        for generated, extracted, _ in cases:
            if extracted is not None:
                assert task.normalize(extracted) == extracted
                assert task.extract_answer("#### " + extracted) == extracted


# ----------------------------------------------------------------------------------------- real data
def _icot_lines(path: Path, limit: int | None = None):
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:limit] if limit else lines


@pytest.mark.skipif(not (DATA / "gsm8k-aug" / "test.txt").exists(), reason="shared data not present")
def test_gsm8k_aug_gold_lines_score_correct():
    """Every gold ``rationale #### answer`` line scores correct against its own answer (1,319 lines)."""
    task = TASKS["gsm8k"]
    for line in _icot_lines(DATA / "gsm8k-aug" / "test.txt"):
        rationale_answer = line.split("||", 1)[1]
        gold = rationale_answer.rsplit("####", 1)[1].strip()
        assert task.is_correct(rationale_answer, gold), line
        assert task.is_correct("#### " + gold, gold)


@pytest.mark.skipif(not (DATA / "multiplication" / "4x4" / "test.txt").exists(), reason="shared data not present")
def test_multiplication_gold_lines_score_correct():
    task = TASKS["multiplication"]
    for line in _icot_lines(DATA / "multiplication" / "4x4" / "test.txt", 200):
        rationale_answer = line.split("||", 1)[1]
        gold = rationale_answer.rsplit("####", 1)[1]
        assert task.is_correct(rationale_answer, gold), line


@pytest.mark.skipif(not (DATA / "svamp" / "SVAMP.json").exists(), reason="shared data not present")
def test_svamp_and_multiarith_golds_normalise():
    for item in json.loads((DATA / "svamp" / "SVAMP.json").read_text(encoding="utf-8")):
        gold = TASKS["svamp"].normalize(item["Answer"])
        assert TASKS["svamp"].is_correct(f"#### {gold}", str(item["Answer"]))
    path = DATA / "multiarith" / "multiarith.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            target = json.loads(line)["target"]
            assert TASKS["multiarith"].is_correct(f"#### {target}", str(target))


def test_digit_matches_and_the_digit_table(tmp_path):
    task = get_task("multiplication")
    assert task.digit_matches("#### 7 8 0 3 7 8 8 1", "7 8 0 3 7 8 8 1") == [True] * 8
    assert task.digit_matches("#### 7 0 8 3", "7 8 0 3 7 8 8 1") == [True, False, False, True] + [False] * 4
    assert task.digit_matches("no answer", "1 2") == [False, False]
    assert task.digit_matches("#### 1 2 3 4", "1 2") == [True, True]  # extra digits: places match, exact does not
    assert not task.is_correct("#### 1 2 3 4", "1 2")
    # lori.evaluation.digits reads lori eval's prediction lines; runs/digit_accuracy.py prints its table.
    import importlib.util

    from lori.evaluation.digits import digit_shares, digit_table, read_predictions

    preds = tmp_path / "predictions-lori-step-000001.jsonl"
    preds.write_text("\n".join(json.dumps({"generated": g, "gold": "1 2 3", "correct": g == "#### 1 2 3"})
                               for g in ("#### 1 2 3", "#### 1 0 3", "#### 9")) + "\n")
    shares = digit_shares(read_predictions(preds), task)
    assert shares.problems == 3 and shares.exact == pytest.approx(1 / 3) and shares.digits == pytest.approx(5 / 9)
    assert shares.per_place == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert "| x | 3 | 33.3 | 55.6 | 66.7 | 33.3 | 66.7 |" in digit_table({"x": shares})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"generated": "#### 1"}\n')
    with pytest.raises(LoriError, match=r"bad.jsonl:1: not a prediction line"):
        read_predictions(bad)
    script = REPO / "runs" / "digit_accuracy.py"
    spec = importlib.util.spec_from_file_location("digit_accuracy", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([f"x={preds}"]) == 0 and mod.main([str(tmp_path / "missing.jsonl")]) == 2
