"""Readers and the multiplication generator, on the real benchmark files in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lori.data import (
    READERS,
    Example,
    generate_multiplication,
    make_example,
    read_examples,
    write_icot,
)
from lori.data.multiplication import operands
from lori.data.readers import (
    format_number,
    read_gsm8k_jsonl,
    read_icot,
    read_pal_jsonl,
    read_svamp_json,
)
from lori.errors import DataError, LoriError

from conftest import DATA, REPO

FIXTURES = REPO / "tests" / "fixtures"
MULT_SIZES = ("4x4", "5x5", "7x7", "9x9")
MULT_FILES = [DATA / "multiplication" / size / f"{split}.txt" for size in MULT_SIZES for split in ("valid", "test")]
ICOT_FILES = [DATA / "gsm8k-aug" / "test.txt", DATA / "gsm8k-aug" / "valid.txt", *MULT_FILES]


def _raw_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize(
    ("rel", "fmt", "count"),
    [
        ("gsm8k-aug/test.txt", "icot", 1319),
        ("gsm8k-aug/valid.txt", "icot", 500),
        ("gsm8k/train.jsonl", "gsm8k", 7473),
        ("gsm8k/test.jsonl", "gsm8k", 1319),
        ("svamp/SVAMP.json", "svamp", 1000),
        ("multiarith/multiarith.jsonl", "multiarith", 600),
    ]
    + [(f"multiplication/{s}/{split}.txt", "icot", 1000) for s in MULT_SIZES for split in ("valid", "test")],
)
def test_item_counts(rel: str, fmt: str, count: int) -> None:
    examples = read_examples(DATA / rel, fmt)
    assert len(examples) == count
    assert examples[0].source == f"{DATA / rel}:1"
    assert all(ex.question and ex.answer for ex in examples)


# ---------------------------------------------------------------- golden parses

JANET = (
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)


def test_golden_gsm8k_aug() -> None:
    ex = read_icot(DATA / "gsm8k-aug" / "test.txt")[0]
    assert (ex.question, ex.steps, ex.answer) == (JANET, ("<<16-3-4=9>>", "<<9*2=18>>"), "18")
    ex = read_icot(DATA / "gsm8k-aug" / "valid.txt")[0]
    assert ex.question.startswith("John cuts his grass to 2 inches.  It grows .5 inches per month.")
    assert ex.steps == ("<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>")
    assert ex.answer == "300"


def test_gsm8k_aug_quirks_are_kept() -> None:
    examples = read_icot(DATA / "gsm8k-aug" / "test.txt")
    assert examples[24].steps == ()  # line 25: "...?|| #### 26"
    assert examples[24].answer == "26"
    assert examples[146].answer == "2,125"  # line 147: commas kept in the iCoT file


def test_golden_gsm8k_jsonl() -> None:
    ex = read_gsm8k_jsonl(DATA / "gsm8k" / "train.jsonl")[0]
    assert ex.question == (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?"
    )
    assert ex.steps == ("<<48/2=24>>", "<<48+24=72>>")
    assert ex.answer == "72"
    ex = read_gsm8k_jsonl(DATA / "gsm8k" / "test.jsonl")[0]
    assert (ex.question, ex.steps, ex.answer) == (JANET, ("<<16-3-4=9>>", "<<9*2=18>>"), "18")


def test_gsm8k_jsonl_matches_gsm8k_aug_test() -> None:
    """GSM8k-Aug's test file is GSM8K's test split with the calculator notes as rationale."""
    aug = read_icot(DATA / "gsm8k-aug" / "test.txt")
    raw = read_gsm8k_jsonl(DATA / "gsm8k" / "test.jsonl")
    assert [e.question for e in raw] == [e.question for e in aug]
    assert [e.steps for e in raw] == [e.steps for e in aug]
    assert [e.answer for e in raw] == [e.answer.replace(",", "") for e in aug]
    assert raw[146].answer == "2125"


def test_golden_svamp() -> None:
    examples = read_svamp_json(DATA / "svamp" / "SVAMP.json")
    ex = examples[0]
    assert ex.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert ex.steps == ("( 76.0 - 25.0 )",)
    assert ex.answer == "51"
    assert all("  " not in e.question for e in examples)
    # The join adds no punctuation; the one double period is in the dataset's own Body (chal-410).
    assert [e.source for e in examples if ".." in e.question] == [f"{DATA / 'svamp' / 'SVAMP.json'}:410"]


def test_golden_multiarith() -> None:
    examples = read_pal_jsonl(DATA / "multiarith" / "multiarith.jsonl")
    assert examples[0].question.startswith("For Halloween Debby and her sister combined the candy they received.")
    assert (examples[0].steps, examples[0].answer) == ((), "39")
    assert examples[-1].source.endswith(":600")  # the last line has no newline but is read


def test_golden_multiplication() -> None:
    ex = read_icot(DATA / "multiplication" / "4x4" / "test.txt")[0]
    assert ex.question == "7 6 9 2 * 1 6 3 6"
    assert ex.steps == (
        "7 6 9 2 0",
        "+ 0 2 0 8 7 1 ( 7 8 9 0 8 1 )",
        "+ 0 0 1 0 9 8 0 ( 7 8 0 1 7 0 1 )",
        "+ 0 0 0 2 0 8 7 1",
    )
    assert ex.answer == "7 8 0 3 7 8 8 1"


def test_gsm8k_hard_fixture() -> None:
    examples = read_examples(FIXTURES / "gsmhard_sample.jsonl", "gsm8k-hard")
    assert [e.answer for e in examples] == ["48000000", "-9867630", "2.5"]
    assert examples[0].question.startswith("Janet has 3 ducks")
    assert all(e.steps == () for e in examples)


@pytest.mark.parametrize(
    ("x", "text"),
    [(51.0, "51"), (2.5, "2.5"), (-9867630.0, "-9867630"), (0.1, "0.1"), (-0.0, "0"), (39, "39"), (1e-05, "0.00001")],
)
def test_format_number(x: float, text: str) -> None:
    assert format_number(x) == text


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "3"])
def test_format_number_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        format_number(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("path", ICOT_FILES, ids=lambda p: "/".join(p.parts[-2:]))
def test_icot_round_trip(path: Path) -> None:
    lines = _raw_lines(path)
    assert [ex.to_icot_line() for ex in read_icot(path)] == lines


def test_write_icot_round_trip(tmp_path: Path) -> None:
    src = DATA / "gsm8k-aug" / "valid.txt"
    out = tmp_path / "sub" / "valid.txt"
    write_icot(read_icot(src), out)
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["valid.txt"]  # no temp file left behind


def test_write_icot_rejects_unreadable(tmp_path: Path) -> None:
    out = tmp_path / "x.txt"
    out.write_text("keep\n")
    with pytest.raises(LoriError, match="newline"):
        write_icot([Example("a\nb", (), "1", "here")], out)
    assert out.read_text() == "keep\n"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("what is 1+1? <<1+1=2>> #### 2", "'||'"),
        ("what is 1+1?||<<1+1=2>> 2", "####"),
        ("   ||<<1+1=2>> #### 2", "empty question"),
        ("what is 1+1?||<<1+1=2>> #### ", "empty answer"),
    ],
)
def test_icot_malformed_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"q||<<1+1=2>> #### 2\n\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_icot(path)
    msg = str(info.value)
    assert "bad.txt:3" in msg and problem in msg and "question||rationale #### answer" in msg
    assert info.value.line == 3


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"question": "q", "answer": "a #### 1"', "invalid JSON"),
        ('{"question": "q"}', "'answer'"),
        ('{"question": "q", "answer": "no final line"}', "####"),
        ("[1, 2]", "not an object"),
    ],
)
def test_gsm8k_malformed_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "<<1+1=2>>2\\n#### 1,000"}\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2") as info:
        read_gsm8k_jsonl(path)
    assert problem in str(info.value)
    path.write_text('{"question": "q", "answer": "<<1+1=2>>2\\n#### 1,000"}', encoding="utf-8")
    assert read_gsm8k_jsonl(path) == [Example("q", ("<<1+1=2>>",), "1000", f"{path}:1")]


def test_number_target_errors(tmp_path: Path) -> None:
    reader = read_pal_jsonl  # MultiArith's and GSM8K-Hard's reader
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "q", "target": 1.0}\n{"input": "q", "target": "3"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: 'target' must be a finite number"):
        reader(path)
    path.write_text('{"input": "q", "target": 1.0}\n{"input": "q"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing key\(s\) 'target'"):
        reader(path)


def test_svamp_errors_name_item(tmp_path: Path) -> None:
    path = tmp_path / "svamp.json"
    good = {"ID": "chal-1", "Body": "A has 3.", "Question": "How many?", "Equation": "( 3.0 )", "Answer": 3.0}
    bad = dict(good, ID="chal-2", Answer=None)
    path.write_text(json.dumps([good, bad]), encoding="utf-8")
    with pytest.raises(DataError, match=r"svamp\.json: item 2 \(ID chal-2\): 'Answer' must be a finite number"):
        read_svamp_json(path)
    path.write_text(json.dumps([good, {"ID": "chal-9", "Body": "b"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"item 2 \(ID chal-9\): missing key\(s\) 'Question', 'Equation', 'Answer'"):
        read_svamp_json(path)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="not a list"):
        read_svamp_json(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("q||<<1=1>> #### 1\n")
    with pytest.raises(DataError) as info:
        read_examples(path, "csv")
    assert "unknown data format 'csv'" in str(info.value)
    for fmt in READERS:
        assert fmt in str(info.value)
    with pytest.raises(DataError, match=r"nope\.txt: file does not exist"):
        read_examples(tmp_path / "nope.txt", "icot")
    with pytest.raises(DataError, match="file does not exist"):
        read_icot(tmp_path / "nope.txt")


# ---------------------------------------------------------------- multiplication


@pytest.mark.parametrize("path", MULT_FILES, ids=lambda p: "/".join(p.parts[-2:]))
def test_make_example_regenerates_every_line(path: Path) -> None:
    for line in _raw_lines(path):
        a, b = line.partition("||")[0].split(" * ")
        assert make_example(a, b).to_icot_line() == line


def test_make_example_rejects_bad_operands() -> None:
    with pytest.raises(LoriError, match="single digits"):
        make_example("12 3", "4 5")


def _real_mult(size: str) -> list[Example]:
    return [ex for split in ("valid", "test") for ex in read_icot(DATA / "multiplication" / size / f"{split}.txt")]


@pytest.mark.parametrize("size", MULT_SIZES)
def test_generate_excludes_real_pairs_and_round_trips(size: str, tmp_path: Path) -> None:
    n, m = map(int, size.split("x"))
    real = _real_mult(size)
    generated = generate_multiplication(n, m, count=2000, seed=0, exclude=real)
    pairs = [operands(ex) for ex in generated]
    assert len(set(pairs)) == len(pairs) == 2000
    assert not set(pairs) & {operands(ex) for ex in real}
    for a, b in pairs:  # sampled like the files: exact widths, non-zero most significant digit
        assert len(a.split()) == n and len(b.split()) == m and a[-1] != "0" and b[-1] != "0"
    assert generate_multiplication(n, m, count=2000, seed=0, exclude=real) == generated
    assert generate_multiplication(n, m, count=50, seed=1) != generated[:50]
    out = tmp_path / "train.txt"
    write_icot(generated, out)
    assert [ex.to_icot_line() for ex in read_icot(out)] == [ex.to_icot_line() for ex in generated]


def test_generate_exclusion_is_effective() -> None:
    """Excluding exactly what a seed would produce forces different pairs, and the space can be exhausted."""
    first = generate_multiplication(4, 4, count=500, seed=7)
    again = generate_multiplication(4, 4, count=500, seed=7, exclude=first)
    assert not {operands(e) for e in first} & {operands(e) for e in again}

    half = generate_multiplication(2, 2, count=4000, seed=3)  # 90 * 90 = 8100 pairs in all
    rest = generate_multiplication(2, 2, count=4100, seed=4, exclude=half)
    assert {operands(e) for e in half} | {operands(e) for e in rest} == {
        operands(make_example(" ".join(str(a)[::-1]), " ".join(str(b)[::-1])))
        for a in range(10, 100)
        for b in range(10, 100)
    }
    with pytest.raises(LoriError, match="only 4100 pairs exist"):
        generate_multiplication(2, 2, count=4101, seed=4, exclude=half)


def test_generate_rejects_non_multiplication_exclude() -> None:
    with pytest.raises(LoriError, match="not a multiplication problem"):
        generate_multiplication(2, 2, count=1, seed=0, exclude=[Example("what?", (), "1", "x:1")])
