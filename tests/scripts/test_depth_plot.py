"""runs/depth_plot.py: mean over seeds with a t-interval (Wilson for one seed) per method and depth, and a plot."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _results(folder: Path, rows: list[tuple[str, int, float]]) -> None:
    folder.mkdir(parents=True)
    folder.joinpath("results.json").write_text(json.dumps({"task": "chains", "split": "test", "n": 100, "results": [
        {"method": m, "checkpoint": "x", "accuracy": a, "ci95": [a - 0.05, a + 0.05], "mean_generated_tokens": 9.0,
         "latency_ms_per_problem": 1.0, "throughput_problems_per_s": 1.0, "seed": s} for m, s, a in rows]}))


def test_depth_table_and_plot(tmp_path):
    _results(tmp_path / "L-2", [("no-cot", 0, 0.9), ("no-cot", 1, 0.7), ("lori", 0, 1.0), ("lori", 1, 1.0)])
    _results(tmp_path / "L-6", [("no-cot", 0, 0.1), ("lori", 0, 0.8)])
    out = subprocess.run([sys.executable, str(REPO / "runs" / "depth_plot.py"), str(tmp_path / "L-2"),
                          str(tmp_path / "L-6"), "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    table = (tmp_path / "depth.md").read_text()
    assert table == out.stdout.split("wrote")[0]
    # two seeds: mean 80 +- t(1) * sd / sqrt(2) = 80 +- 12.706 * 14.142 / 1.414 -> clipped to [0, 100]
    assert "| no-cot | 80.0 [0.0, 100.0] (9 tok) | 10.0 [5.0, 15.0] (9 tok) |" in table
    assert "| lori | 100.0 [100.0, 100.0] (9 tok) | 80.0 [75.0, 85.0] (9 tok) |" in table
    assert (tmp_path / "accuracy_vs_depth.png").stat().st_size > 1000
