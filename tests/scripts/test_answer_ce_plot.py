"""runs/answer_ce_plot.py and lori.evaluation.plots.answer_token_curves: per-answer-token curves read back from
metrics.jsonl exactly, validation lines skipped, runs without the values told apart."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lori.evaluation.plots import answer_token_curves, plot_answer_token_ce

from conftest import REPO


def _run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_curves_are_read_back_per_token_in_order(tmp_path):
    # ce_ans10 must sort after ce_ans2 (numeric, not string order); validation lines carry no values
    rec = lambda step, base: {"step": step, "stage": 1, "ce": 0.5,
                              **{f"ce_ans{j}": base + j for j in range(1, 11)}}
    run = _run(tmp_path / "a", [rec(50, 0.0), {"step": 50, "valid_accuracy": 0.5}, rec(100, 100.0)])
    steps, curves = answer_token_curves(run / "metrics.jsonl")
    assert steps == [50, 100]
    assert len(curves) == 10
    assert curves[1] == [2.0, 102.0] and curves[9] == [10.0, 110.0]
    plain = _run(tmp_path / "b", [{"step": 50, "ce": 0.5}])
    assert answer_token_curves(plain / "metrics.jsonl") == ([], [])
    assert plot_answer_token_ce({"b": [plain / "metrics.jsonl"]}, tmp_path / "none.png") is None
    bad = _run(tmp_path / "c", [rec(50, 0.0), {"step": 100, "ce_ans1": 1.0}])
    with pytest.raises(ValueError, match="step 100 logs 1 answer tokens"):
        answer_token_curves(bad / "metrics.jsonl")


def test_the_script_writes_both_figures(tmp_path):
    records = [{"step": s, "stage": 1 + s // 100, **{f"ce_ans{j}": 2.3 / s for j in range(1, 9)}}
               for s in (50, 100, 150)] + [{"step": 100, "valid_accuracy": 0.25}]
    a, b = _run(tmp_path / "icot", records), _run(tmp_path / "lori", records)
    out = tmp_path / "fig" / "x.png"
    done = subprocess.run([sys.executable, str(REPO / "runs" / "answer_ce_plot.py"), str(a), f"L={b}", "--out",
                           str(out)], capture_output=True, text=True, check=True)
    assert out.stat().st_size > 1000 and (tmp_path / "fig" / "x-valid.png").stat().st_size > 1000
    assert "wrote" in done.stdout
    missing = subprocess.run([sys.executable, str(REPO / "runs" / "answer_ce_plot.py"), str(tmp_path), "--out",
                              str(out)], capture_output=True, text=True)
    assert missing.returncode != 0 and "no metrics.jsonl" in missing.stderr


def test_a_continuation_is_drawn_after_the_run_it_continues(tmp_path):
    spec = importlib.util.spec_from_file_location("answer_ce_plot", REPO / "runs" / "answer_ce_plot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_run("phase 2=out/a-p2@36000") == ("phase 2", Path("out/a-p2"), 36000)
    assert mod.parse_run("out/a") == ("a", Path("out/a"), 0)
    records = [{"step": 100, "stage": 2, "ce": 1.0}, {"step": 100, "valid_accuracy": 0.5}]
    assert mod.validation_points(records, 36000) == ([(36100, 50.0)], [(36100, 2)])
    # runs without a curriculum get no stage panel, and the figure is still written
    plain = _run(tmp_path / "p2", [{"step": 50, "ce_ans1": 1.0, "ce_ans2": 1.0}, {"step": 50, "valid_accuracy": 0.1}])
    out = tmp_path / "y.png"
    assert mod.main([f"{plain}@1000", "--out", str(out)]) == 0
    assert (tmp_path / "y-valid.png").stat().st_size > 1000
