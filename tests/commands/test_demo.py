"""`lori demo` end to end at toy scale: every stage runs and every output file is written and well-formed; the
shipped teacher is installed and evaluated when the teacher's settings are the preset's, and trained otherwise."""

import json

from lori.cli import main
from lori.evaluation.results import read_results

TOY = ["data.chain_steps=2", "data.train_size=300", "data.valid_size=20", "data.test_size=24",
       "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
       "train.global_batch=16", "train.micro_batch=16", "train.eval_size=8", "eval.latency_problems=2",
       "teacher.train.steps=8", "student.train.steps=6", "student.curriculum.steps_per_stage=2",
       "student.curriculum.stages=2", "student.lori.calib_size=100", "student.lori.rank=4",
       "student.lori.latent_steps=2"]


def test_demo_runs_end_to_end_and_reuses_finished_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TOY]) == 0
    assert "training the teacher: the shipped teacher was trained with other settings" in capsys.readouterr().out
    task, split, n, rows = read_results(out / "results.json")
    assert (task, split, n) == ("chains", "test", 24)
    assert [r.method for r in rows] == ["cot-sft", "no-cot", "lori"]
    assert all(0 <= r.accuracy <= 1 and r.latency_ms_per_problem > 0 for r in rows)
    lori_row = rows[2]
    assert lori_row.mean_generated_tokens >= 2 + 1  # two latent steps and <eot> before any answer token
    report = (out / "report.md").read_text()
    assert "| cot-sft |" in report and "| lori |" in report and "energy captured" in report
    assert "Chance is 1/10" in report
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert len((out / "predictions-lori.jsonl").read_text().splitlines()) == 24
    assert json.loads((out / "lori-cache" / "manifest.json").read_text())["complete"] is True
    # No-CoT has no curriculum (so no optimizer resets); LoRi has the preset's
    assert "stages: 0" in (out / "no-cot" / "config.yaml").read_text()
    capsys.readouterr()
    # A second run reuses the finished trainings instead of redoing them.
    assert main(["demo", "--out", str(out), *TOY]) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 3


def test_demo_installs_and_evaluates_the_shipped_teacher(tmp_path, capsys):
    out = tmp_path / "demo"
    small = ["eval.limit=20", "eval.latency_problems=1", "student.data.train_size=150", "student.train.steps=2",
             "student.train.eval_size=4", "student.lori.calib_size=60", "student.curriculum.steps_per_stage=1"]
    assert main(["demo", "--out", str(out), *small]) == 0
    printed = capsys.readouterr().out
    assert "the shipped checkpoint of configs/chains-cot-sft.yaml" in printed
    assert (out / "cot-sft" / "checkpoints" / "step-001000" / "model.safetensors").is_file()
    _, _, n, rows = read_results(out / "results.json")
    assert n == 20 and rows[0].method == "cot-sft"
    assert rows[0].accuracy >= 0.95  # the shipped teacher solves the 6-step chains
