"""runs/seed_table.py: runs named ROW-seedN grouped into mean ± t half-width over seeds, unfinished runs marked."""

import subprocess
import sys

from conftest import REPO
from lori.cli import main

TOY = ["method=coconut", "data.task=multiplication", "data.digits=[2,2]", "data.train_size=64", "data.valid_size=8",
       "data.test_size=16", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
       "model.intermediate_size=64", "train.global_batch=16", "train.micro_batch=16", "train.eval_every=0",
       "train.log_every=100", "eval.latency_problems=2", "eval.batch_size=16", "eval.max_new_tokens=24",
       "curriculum.stages=2", "curriculum.steps_per_stage=2", "coconut.latent_steps=2"]


def test_rows_over_seeds_with_unfinished_runs_marked(tmp_path):
    runs = {"short-seed0": ("train.steps=3", "train.seed=0"), "short-seed1": ("train.steps=3", "train.seed=1"),
            "long-seed0": ("train.steps=6", "train.seed=0")}
    for name, extra in runs.items():
        main(["train", *TOY, *extra, f"out_dir={tmp_path / name}"])
        main(["eval", str(tmp_path / name)])
    (tmp_path / "late-seed0").mkdir()  # trained, not evaluated yet: listed, not counted
    out = subprocess.run([sys.executable, str(REPO / "runs" / "seed_table.py"),
                          *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    # 3 steps with 2-step stages end in stage 2 of 3: unfinished in both seeds; 6 steps reach the final stage
    assert lines["short"][1] == "2" and lines["short"][4] == "NO in 2 (2, 2 of 3)"
    assert lines["long"][1] == "1" and lines["long"][4] == "yes" and "(Wilson)" in lines["long"][2]
    # the mean of the two seeds, their t half-width, each seed's accuracy
    a, b = (float(x) for x in lines["short"][3].split(" / "))
    assert lines["short"][2].startswith(f"{(a + b) / 2:.1f}")
    assert "(not evaluated yet:" in out and "late-seed0" in out
