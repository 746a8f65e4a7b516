"""runs/necessity_table.py: one line per analysed student from analysis.json's necessity checks."""

import json
import subprocess
import sys

from conftest import REPO


def test_one_line_per_analysed_student(tmp_path):
    per_step = [{"step": k, "thought": k, "changed": c, "accuracy": 0.1, "implied": i, "follows_implied": f}
                for k, c, i, f in ((1, 0.9, 180, 1.0), (2, 0.85, 170, 0.95), (3, 0.5, 0, 0.0))]
    necessity = {"n": 200, "latent_steps": 3, "seed": 0, "clean": {"accuracy": 1.0, "changed": 0.0},
                 "zeroed": {"accuracy": 0.085, "changed": 0.915}, "noise": {"accuracy": 0.09, "changed": 0.91},
                 "shuffled": {"accuracy": 0.075, "changed": 0.925},
                 "swapped": {"accuracy": 0.09, "changed": 0.91, "pairs": 100, "follows_partner": 0.98,
                             "partner_gold_is_own": 0.09}, "per_step": per_step}
    values = [{"step": k, "n": 200, "share": s} for k, s in ((1, 1.0), (2, 0.97), (3, 1.0))]
    (tmp_path / "a-seed0" / "analysis-valid").mkdir(parents=True)
    (tmp_path / "a-seed0" / "analysis-valid" / "analysis.json").write_text(json.dumps(
        {"student_analysis": {"necessity": necessity, "step_values": values}}))
    (tmp_path / "b-seed0").mkdir()
    out = subprocess.run([sys.executable, str(REPO / "runs" / "necessity_table.py"), str(tmp_path / "a-seed0"),
                          str(tmp_path / "b-seed0")], capture_output=True, text=True, check=True).stdout
    # the per-step columns: the least share changed (50.0), the least share following among the steps that moved
    # answers (step 3 moved none: 95.0, not 0.0), the least share decoding its step's value (97.0)
    assert "| a-seed0 | 200 | 100.0 | 8.5 | 9.0 | 7.5 | 9.0 (98.0) | 50.0 | 95.0 | 97.0 |" in out
    assert "(not analysed: b-seed0)" in out
