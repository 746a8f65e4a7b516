"""`lori compare` at toy scale: methods x seeds, per-seed rows, the mean over seeds, the plot, and reuse."""

import json
import re

import pytest

from lori.cli import main
from lori.commands.compare import compare_configs, parse_methods, parse_seeds
from lori.errors import ConfigError
from lori.evaluation.metrics import mean_ci
from lori.evaluation.results import ResultRow, aggregate_table, read_results, write_results
from lori.methods import METHODS

SIX = ["no-cot", "cot-sft", "icot-si", "coconut", "codi", "lori", "aux-sum"]  # every method (the six and aux-sum)
TOY = ["data.digits=[2,2]", "data.train_size=200", "data.valid_size=16", "data.test_size=16",
       "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
       "train.global_batch=16", "train.micro_batch=16", "train.eval_size=8", "train.eval_every=0",
       "train.log_every=100", "eval.latency_problems=2", "eval.batch_size=16", "eval.max_new_tokens=24",
       "teacher.train.steps=6", "student.train.steps=4", "student.curriculum.steps_per_stage=1",
       "student.lori.calib_size=64", "student.lori.rank=4", "student.lori.latent_steps=2",
       "student.coconut.latent_steps=2", "student.codi.latent_steps=2"]


def _presets(tmp_path):
    teacher, student = tmp_path / "teacher.yaml", tmp_path / "student.yaml"
    teacher.write_text("method: cot-sft\ndata: {task: multiplication, seed: 0}\ntrain: {steps: 10, lr: 1.0e-3}\n")
    student.write_text("method: lori\nmodel: {init_from: somewhere/else}\n"
                       "train: {steps: 8, lr: 5.0e-4, seed: 7}\n"
                       "lori: {teacher: somewhere/else, cache_dir: somewhere/else-cache}\n"
                       "curriculum: {stages: 2, steps_per_stage: 2}\n")
    return teacher, student


def test_compare_configs_cover_every_method(tmp_path):
    assert sorted(SIX) == sorted(METHODS)
    teacher, student = _presets(tmp_path)
    out = tmp_path / "cmp"
    cfgs = compare_configs(teacher, student, SIX, [0, 3], out, ["student.train.lr=2e-4", "eval.limit=5"])
    assert set(cfgs) == {0, 3}
    for seed, runs in cfgs.items():
        assert set(runs) == set(SIX) and next(iter(runs)) == "cot-sft"  # the teacher first
        teacher_dir = str(out / f"seed-{seed}" / "cot-sft")
        for method, cfg in runs.items():
            assert cfg.method == method and cfg.out_dir == str(out / f"seed-{seed}" / method)
            assert cfg.train.seed == seed and cfg.data.seed == 0  # only the training seed varies
            assert cfg.eval.limit == 5  # shared overrides reach both sides
            if method == "cot-sft":
                assert cfg.train.steps == 10 and cfg.train.lr == 1e-3 and cfg.model.init_from is None
            else:
                assert cfg.train.steps == 8 and cfg.train.lr == 2e-4 and cfg.model.init_from == teacher_dir
                # the student preset applies to every student, but No-CoT and aux-sum render no stage (no resets)
                assert cfg.curriculum.stages == (2 if METHODS[method].curriculum else 0)
        assert runs["lori"].lori.teacher == teacher_dir
        assert runs["lori"].lori.cache_dir == str(out / f"seed-{seed}" / "lori-cache")
        assert runs["no-cot"].lori.teacher is None and runs["codi"].lori.cache_dir is None  # no stale paths
    # METHOD: overrides reach that one run only, after the side overrides.
    one = compare_configs(teacher, student, SIX, [0], out, ["student.curriculum.stages=3", "codi:curriculum.stages=0",
                                                            "no-cot:curriculum.stages=0", "cot-sft:train.steps=12"])[0]
    assert one["codi"].curriculum.stages == 0 and one["no-cot"].curriculum.stages == 0
    assert one["lori"].curriculum.stages == 3 and one["coconut"].curriculum.stages == 3
    assert one["cot-sft"].train.steps == 12 and one["lori"].train.steps == 8
    # Without cot-sft among the methods the teacher is still built (the students start from it).
    assert list(compare_configs(teacher, student, ["lori"], [0], out, [])[0]) == ["cot-sft", "lori"]


def test_compare_rejects_bad_input(tmp_path):
    teacher, student = _presets(tmp_path)
    with pytest.raises(ConfigError, match="unknown method 'cot'"):
        parse_methods("no-cot,cot")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("lori,lori")
    assert parse_seeds("0, 2") == [0, 2]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="icot-si.*curriculum.stages"):  # the run is named
        compare_configs(teacher, student, ["icot-si"], [0], tmp_path, ["student.curriculum.stages=0"])
    with pytest.raises(ConfigError, match="eval.max_new_tokens"):  # the runs must be scored the same way
        compare_configs(teacher, student, ["lori"], [0], tmp_path, ["student.eval.max_new_tokens=7"])
    with pytest.raises(ConfigError, match="method: cot-sft"):
        compare_configs(student, student, ["lori"], [0], tmp_path, [])
    with pytest.raises(ConfigError, match="'cod' before ':' is not a method"):
        compare_configs(teacher, student, ["codi"], [0], tmp_path, ["cod:curriculum.stages=0"])
    with pytest.raises(ConfigError, match="no coconut run"):
        compare_configs(teacher, student, ["codi"], [0], tmp_path, ["coconut:curriculum.stages=0"])
    assert main(["compare", "--teacher", str(teacher), "--student", str(student), "--methods", "x",
                 "--out", str(tmp_path / "o")]) == 2


def _aggregate_cells(md: str) -> dict[str, list[str]]:
    section = md.split("## Mean over seeds", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_aggregate_table_means_over_seeds(tmp_path):
    rows = [ResultRow("cot-sft", "c0", 0.90, (0.85, 0.94), 40.0, 100.0, 10.0, seed=0),
            ResultRow("cot-sft", "c1", 0.80, (0.74, 0.85), 42.0, 80.0, 12.0, seed=1),
            ResultRow("lori", "l0", 0.70, (0.64, 0.76), 6.0, 20.0, 50.0, seed=0),
            ResultRow("lori", "l1", 0.60, (0.54, 0.66), 8.0, 25.0, 40.0, seed=1),
            ResultRow("no-cot", "n0", 0.25, (0.2, 0.3), 5.0, 10.0, 90.0, seed=0)]
    cells = _aggregate_cells("## Mean over seeds\n" + aggregate_table(rows))
    mean, lo, hi = mean_ci([0.7, 0.6])  # t_{0.975,1} = 12.706: a wide interval, its bracket clipped at 100%
    assert cells["lori"] == ["2", f"65.0 ± {50 * (hi - lo):.1f} [{100 * lo:.1f}, 100.0]", "7.0", "22.5",
                             "45.00", "4.00x"]  # 90 ms / 22.5 ms
    assert cells["cot-sft"][1].startswith("85.0 ± ") and cells["cot-sft"][-1] == "1.00x"
    assert cells["no-cot"][:2] == ["1", "25.0 ± n/a"]  # one seed: no interval rather than a zero-width one
    _, md = write_results(tmp_path, "multiplication", "test", 100, rows, aggregate=True)
    assert _aggregate_cells(md.read_text()) == cells
    assert "## Mean over seeds" not in write_results(tmp_path, "m", "test", 100, rows)[1].read_text()


def test_compare_end_to_end_and_reuse(tmp_path, capsys):
    teacher, student = _presets(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", "--teacher", str(teacher), "--student", str(student), "--methods", ",".join(SIX),
            "--seeds", "0,1", "--out", str(out), *TOY]
    assert main(argv) == 0
    task, split, n, rows = read_results(out / "results.json")
    assert (task, split, n) == ("multiplication", "test", 16)
    assert [(r.method, r.seed) for r in rows] == [(m, s) for m in SIX for s in (0, 1)]
    raw = json.loads((out / "results.json").read_text())["results"]
    assert all("seed" in r for r in raw)
    assert all(0 <= r.accuracy <= 1 and r.latency_ms_per_problem > 0 for r in rows)
    for r in rows:  # every run has its own folder, evaluation and predictions
        assert r.checkpoint.startswith(str(out / f"seed-{r.seed}" / r.method / "checkpoints"))
        preds = list((out / f"seed-{r.seed}" / r.method / "eval-test").glob("predictions-*.jsonl"))
        assert len(preds) == 1 and len(preds[0].read_text().splitlines()) == 16
    latent = [r for r in rows if r.method in ("coconut", "codi", "lori")]
    assert all(r.mean_generated_tokens >= 2 + 1 for r in latent)  # two thoughts and <eot> before the answer
    # Seeds differ only in train.seed: the two teachers are different models.
    assert (out / "seed-0" / "lori-cache" / "manifest.json").is_file()
    assert (out / "seed-1" / "lori-cache" / "manifest.json").is_file()

    md = (out / "results.md").read_text()
    cells = _aggregate_cells(md)
    assert list(cells) == SIX
    for method in SIX:
        mine = [r for r in rows if r.method == method]
        mean, lo, hi = mean_ci([r.accuracy for r in mine])
        seeds, acc, tokens, *rest = cells[method]
        truncated = sum(r.truncated for r in mine)  # generations cut at eval.max_new_tokens, summed over seeds
        if "| truncated |" in md:  # the column is there when some row was cut; its tokens are marked
            assert rest.pop(0) == str(truncated) and tokens.endswith("\\*") == (truncated > 0)
            tokens = tokens.removesuffix("\\*")
        latency = rest[0]
        assert seeds == "2"
        m = re.fullmatch(r"(-?[\d.]+) ± ([\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", acc)
        assert m, acc
        assert float(m.group(1)) == pytest.approx(100 * mean, abs=0.051)
        assert float(m.group(3)) == pytest.approx(100 * max(0.0, lo), abs=0.051)  # clipped to [0, 100]
        assert float(m.group(4)) == pytest.approx(100 * min(1.0, hi), abs=0.051)
        assert float(tokens) == pytest.approx(sum(r.mean_generated_tokens for r in mine) / 2, abs=0.051)
        assert float(latency) == pytest.approx(sum(r.latency_ms_per_problem for r in mine) / 2, abs=0.051)
    assert cells["cot-sft"][-1] == "1.00x"  # the speedup column, against cot-sft
    # Digit-string answers: each row carries its digit share, and results.md the mean over seeds per method.
    from lori.evaluation.digits import digit_shares, read_predictions
    from lori.evaluation.plots import answer_token_curves
    from lori.tasks import get_task

    for r, d in zip(rows, raw):
        preds = next((out / f"seed-{r.seed}" / r.method / "eval-test").glob("predictions-*.jsonl"))
        share = digit_shares(read_predictions(preds), get_task("multiplication")).digits
        assert d["extra"]["digit_accuracy"] == pytest.approx(share, abs=1e-6)
    digits = md.split("## Answer digits", 1)[1]
    for method in SIX:
        mean = sum(d["extra"]["digit_accuracy"] for d in raw if d["method"] == method) / 2
        line = next(x for x in digits.splitlines() if x.startswith(f"| {method} |"))
        assert float(line.split("|")[4]) == pytest.approx(100 * mean, abs=0.051)
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    # the per-answer-digit training cross-entropy of every run is plotted (one panel per method, seeds averaged)
    assert (out / "answer_token_ce.png").stat().st_size > 1000
    for r in rows:
        steps, curves = answer_token_curves(out / f"seed-{r.seed}" / r.method / "metrics.jsonl")
        assert steps and len(curves) == 4, r.method  # 2x2 products: 4 answer digits, logged by every method
    first = capsys.readouterr().out
    assert "Mean over seeds" in first and "speedup vs cot-sft" in first and "Answer digits" in first

    # A second call reuses every finished run and evaluation and writes the same rows.
    assert main(argv) == 0
    again = capsys.readouterr().out
    runs = 2 * len(SIX)  # methods x seeds
    assert again.count("reusing the finished run") == runs and again.count("reusing its evaluation") == runs
    assert "=== seed" not in again  # nothing trained
    assert read_results(out / "results.json")[3] == rows
