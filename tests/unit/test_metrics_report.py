"""Confidence intervals and the results.json / results.md contract."""

from __future__ import annotations

import json
import math
import re

import pytest

from lori.errors import DataError, LoriError
from lori.evaluation.metrics import mean_ci, t_ppf, wilson_ci
from lori.evaluation.results import ResultRow, markdown_table, read_results, write_results


# ----------------------------------------------------------------------------------------- Wilson
@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (95, 100, 0.8882, 0.9785),  # textbook value
        (50, 100, 0.4038, 0.5962),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (1283, 1319, 0.9625, 0.9802),  # hand-computed
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_ci(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert 0.0 <= got[0] <= k / n <= got[1] <= 1.0


def test_wilson_edges():
    assert wilson_ci(0, 0) == (0.0, 1.0)
    assert wilson_ci(0, 7)[0] == 0.0 and wilson_ci(7, 7)[1] == 1.0
    wide, narrow = wilson_ci(95, 100, z=2.575829), wilson_ci(95, 100)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    for k, n in ((-1, 5), (6, 5), (0, -1)):
        with pytest.raises(ValueError):
            wilson_ci(k, n)


# ----------------------------------------------------------------------------------------- Student t
@pytest.mark.parametrize(
    "q,df,expected",
    [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 29, 2.0452),
     (0.975, 1000, 1.9623), (0.995, 5, 4.0321), (0.95, 3, 2.3534), (0.025, 4, -2.7764), (0.5, 7, 0.0)],
)
def test_t_quantile_table(q, df, expected):
    assert t_ppf(q, df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci():
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    half = 4.302653 / math.sqrt(3)  # t_{0.975,2} * s / sqrt(n), s = 1
    assert (lo, hi) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-5)
    mean, lo, hi = mean_ci([0.42, 0.44, 0.43, 0.45, 0.41], confidence=0.9)
    half = 2.131847 * math.sqrt(0.00025 / 5)
    assert (mean, lo, hi) == pytest.approx((0.43, 0.43 - half, 0.43 + half), abs=1e-6)
    assert mean_ci([5.0, 5.0]) == (5.0, 5.0, 5.0)


def test_mean_ci_single_value_is_nan_width_and_empty_raises():
    mean, lo, hi = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        mean_ci([])


# ----------------------------------------------------------------------------------------- results files
def _rows():
    return [
        ResultRow("cot-sft", "ckpt/cot", 0.43, wilson_ci(567, 1319), 25.04, 260.0, 3.85),
        ResultRow("no-cot", "ckpt/nocot", 0.165, wilson_ci(218, 1319), 2.2, 30.0, 33.3),
        ResultRow("lori", "ckpt/lori|v2", 0.5, wilson_ci(660, 1319), 8.16, 52.0, 19.2, seed=3,
                  extra={"rank": 8, "note": "x"}),
    ]


REQUIRED = {"method", "checkpoint", "accuracy", "ci95", "mean_generated_tokens", "latency_ms_per_problem",
            "throughput_problems_per_s"}


def test_round_trip_and_exact_shape(tmp_path):
    rows = _rows()
    json_path, md_path = write_results(tmp_path / "out", "gsm8k", "test", 1319, rows)
    assert json_path.name == "results.json" and md_path.name == "results.md"
    data = json.loads(json_path.read_text())
    assert list(data) == ["task", "split", "n", "results"]
    assert (data["task"], data["split"], data["n"]) == ("gsm8k", "test", 1319)
    assert set(data["results"][0]) == REQUIRED
    assert set(data["results"][1]) == REQUIRED
    assert set(data["results"][2]) == REQUIRED | {"seed", "extra"}
    assert isinstance(data["results"][0]["ci95"], list) and len(data["results"][0]["ci95"]) == 2
    assert read_results(json_path) == ("gsm8k", "test", 1319, rows)
    assert read_results(tmp_path / "out") == ("gsm8k", "test", 1319, rows)  # the folder works too
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_rewrite_replaces(tmp_path):
    write_results(tmp_path, "svamp", "test", 1000, _rows())
    write_results(tmp_path, "svamp", "test", 1000, _rows()[:1])
    assert len(read_results(tmp_path / "results.json")[3]) == 1


def _table_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_well_formed(tmp_path):
    _, md_path = write_results(tmp_path, "gsm8k", "test", 1319, _rows())
    lines = _table_lines(md_path.read_text())
    assert len(lines) == 2 + 3
    assert len({_pipes(line) for line in lines}) == 1  # same column count everywhere
    assert re.fullmatch(r"\|(?:-{3,}:?\|)+", lines[1])
    header = lines[0]
    assert "speedup vs cot-sft" in header and "seed" in header
    cot, nocot, lori = lines[2:]
    assert "43.0 [" in cot and "| 1.00x |" in cot
    assert "| 8.67x |" in nocot  # 260 / 30
    assert "| 5.00x |" in lori  # 260 / 52
    assert "| 25.0 |" in cot  # tokens with 1 decimal
    assert "ckpt/lori\\|v2" in lori  # a pipe in a cell is escaped
    lo, hi = wilson_ci(660, 1319)
    assert f"50.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in lori


def test_markdown_without_baseline_or_seed():
    rows = [r for r in _rows() if r.method != "cot-sft" and r.seed is None]
    md = markdown_table(rows)
    assert "speedup" not in md and "seed" not in md
    assert len({_pipes(line) for line in md.splitlines()}) == 1
    assert md == markdown_table(rows)  # deterministic, reusable for console printing


def test_write_rejects_bad_rows(tmp_path):
    bad = _rows()
    bad[1].accuracy = 43.0  # a percent, not a fraction
    with pytest.raises(LoriError, match=r"results\[1\]\.accuracy"):
        write_results(tmp_path, "gsm8k", "test", 1319, bad)
    bad = _rows()
    bad[0].latency_ms_per_problem = float("nan")
    with pytest.raises(LoriError, match=r"results\[0\]\.latency_ms_per_problem"):
        write_results(tmp_path, "gsm8k", "test", 1319, bad)
    assert not (tmp_path / "results.json").exists()  # nothing written


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("split"), r"split: missing key"),
        (lambda d: d.update(n="1319"), r"n: must be an integer"),
        (lambda d: d["results"][1].pop("ci95"), r"results\[1\]\.ci95: missing key"),
        (lambda d: d["results"][0].update(ci95=[0.1]), r"results\[0\]\.ci95: must be a list"),
        (lambda d: d["results"][0].update(accuracy="43%"), r"results\[0\]\.accuracy: must be a number"),
        # read and write share one validation (ResultRow.problem): what writing refuses, reading refuses too
        (lambda d: d["results"][1].update(accuracy=43.0), r"results\[1\]\.accuracy: must be a number in \[0, 1\]"),
        (lambda d: d["results"][0].update(ci95=[0.5, 0.4]), r"results\[0\]\.ci95: .*lo <= hi"),
        (lambda d: d["results"][2].update(acuracy=0.5), r"results\[2\]\.acuracy: unknown key"),
        (lambda d: d.update(results={}), r"results: must be a list"),
        (lambda d: d.update(extra=1), r"extra: unknown top-level key"),
    ],
)
def test_read_bad_file_names_the_key(tmp_path, mutate, match):
    json_path, _ = write_results(tmp_path, "gsm8k", "test", 1319, _rows())
    data = json.loads(json_path.read_text())
    mutate(data)
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match) as info:
        read_results(json_path)
    assert str(json_path) in str(info.value)


def test_read_missing_or_invalid_json(tmp_path):
    with pytest.raises(DataError, match="no such results file"):
        read_results(tmp_path / "nope.json")
    bad = tmp_path / "results.json"
    bad.write_text('{"task": "gsm8k",\n "split": }')
    with pytest.raises(DataError, match=r"results.json:2: not valid JSON"):
        read_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="top level must be an object"):
        read_results(bad)
