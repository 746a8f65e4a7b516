"""runs/depth_sweep.sh at toy scale: the tuning, the sanity gates (a sweep whose No-CoT cannot learn L = 1 stops,
saying why), the depths with their tuned recipes, the K = L/2 rows, and runs/sanity_gate.py on its own."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

TOY = ("model.hidden_size=32 model.num_layers=2 model.num_heads=2 model.intermediate_size=64 data.train_size=64 "
       "data.valid_size=8 data.test_size=16 teacher.train.steps=4 student.train.steps=14 "
       "student.curriculum.steps_per_stage=1 train.global_batch=16 train.micro_batch=16 train.eval_size=8 "
       "train.eval_every=2 train.log_every=100 eval.latency_problems=2 eval.batch_size=16 student.lori.calib_size=32 "
       "student.lori.rank=4")


def sweep(tmp_path, **env):
    env = {**os.environ, "OUT": str(tmp_path / "depth"), "SEEDS": "0", "EXTRA": TOY, "PY": sys.executable,
           "LORI": str(REPO / ".venv" / "bin" / "lori"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "runs" / "depth_sweep.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True)


def test_a_budget_that_cannot_teach_a_lookup_stops_the_sweep(tmp_path):
    run = sweep(tmp_path, METHODS="no-cot,cot-sft", DEPTHS="2")
    assert run.returncode == 1
    assert "no-cot reaches" in run.stderr and "raise the budget (student.train.steps)" in run.stderr
    out = tmp_path / "depth"
    assert (out / "tune" / "recipes.yaml").is_file() and not (out / "L-2").exists()  # stopped before the depths
    cfg = (out / "L-1" / "seed-0" / "no-cot" / "config.yaml").read_text()
    assert "chain_modulus: 97" in cfg and "chain_steps: 1" in cfg  # L = 1 needs more than m = 10's 200 questions


@pytest.mark.slow  # ~2 min on 2 cores: tuning, gates, one depth and the K = L/2 rows of five methods
def test_the_whole_sweep_at_toy_scale(tmp_path):
    run = sweep(tmp_path, METHODS="no-cot,cot-sft,lori", DEPTHS="2", VARIANTS="k-half", NOCOT_MIN="0",
                TEACHER_MIN="0")
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "depth"
    rows = json.loads((out / "L-2" / "results.json").read_text())["results"]
    assert {r["method"] for r in rows} == {"no-cot", "cot-sft", "lori"}
    assert (out / "depth.md").is_file() and (out / "accuracy_vs_depth.png").is_file()
    lori = (out / "k-half-L-8" / "seed-0" / "lori" / "config.yaml").read_text()
    assert "latent_steps: 4" in lori and "steps_per_group: 2" in lori and "stages: 4" in lori


def test_sanity_gate(tmp_path):
    def results(accs, teacher):
        f = tmp_path / "results.json"
        f.write_text(json.dumps({"task": "chains", "split": "test", "n": 100, "results": [
            {"method": m, "checkpoint": "x", "accuracy": a, "ci95": [max(0, a - 0.05), min(1, a + 0.05)],
             "mean_generated_tokens": 3.0, "latency_ms_per_problem": 1.0, "throughput_problems_per_s": 1.0,
             "seed": s, "extra": {"teacher_valid_accuracy": teacher}} for s, (m, a) in enumerate(accs)]}))
        return subprocess.run([sys.executable, str(REPO / "runs" / "sanity_gate.py"), str(f), "--method", "no-cot",
                               "--min", "0.95"], capture_output=True, text=True)

    ok = results([("no-cot", 0.96), ("no-cot", 0.98), ("cot-sft", 1.0)], 1.0)
    assert ok.returncode == 0 and "97.0% >= 95%" in ok.stdout
    low = results([("no-cot", 0.90), ("no-cot", 0.98)], 0.995)
    assert low.returncode == 1 and "no-cot reaches 94.0% (mean of 2 seeds)" in low.stderr
    weak = results([("no-cot", 1.0)], 0.9)
    assert weak.returncode == 1 and "teachers below 99% on validation: 0.900 (seed 0)" in weak.stderr
