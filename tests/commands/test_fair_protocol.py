"""The comparison protocol of `lori compare` and `lori tune` (docs/evaluation.md): one budget, curricula scheduled
inside it, unfinished runs marked, the best final-stage validation checkpoint scored, iCoT-SI's position keeping,
the sanity checks, and the tuning grid."""

import json

import pytest
import torch
import yaml

from lori.cli import main
from lori.commands.compare import compare_configs
from lori.commands.tune import choose, read_grid
from lori.config import Config, CurriculumConfig, TrainConfig, load_config
from lori.data.render import segments
from lori.data.splits import load_split
from lori.errors import ConfigError
from lori.evaluation.generate import greedy_generate
from lori.evaluation.results import ResultRow, aggregate_table, markdown_table, read_results
from lori.evaluation.sanity import answer_shares, constant_predictor, warnings
from lori.methods import METHODS
from lori.models.build import tiny_model
from lori.models.loading import builtin_tokenizer
from lori.tasks import get_task
from lori.training import loop
from lori.training.checkpoint import load_state, read_best
from lori.training.curriculum import CurriculumClock, schedule

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
TOY = ["data.digits=[2,2]", "data.train_size=200", "data.valid_size=16", "data.test_size=16", *TINY,
       "train.global_batch=16", "train.micro_batch=16", "train.eval_size=8", "train.eval_every=0",
       "train.log_every=1", "eval.latency_problems=2", "eval.batch_size=16", "eval.max_new_tokens=24",
       "teacher.train.steps=6", "student.coconut.latent_steps=2"]


def _presets(tmp_path, student_steps=8, stages=3, per_stage=3):
    teacher, student = tmp_path / "teacher.yaml", tmp_path / "student.yaml"
    teacher.write_text("method: cot-sft\ndata: {task: multiplication, seed: 0}\ntrain: {steps: 6, lr: 1.0e-3}\n")
    student.write_text(f"method: coconut\ntrain: {{steps: {student_steps}, lr: 5.0e-4}}\n"
                       f"curriculum: {{stages: {stages}, steps_per_stage: {per_stage}}}\n")
    return teacher, student


def _compare(tmp_path, name, *overrides, methods="cot-sft,coconut"):
    teacher, student = _presets(tmp_path)
    out = tmp_path / name
    argv = ["compare", "--teacher", str(teacher), "--student", str(student), "--methods", methods, "--seeds", "0",
            "--out", str(out), *TOY, *overrides]
    return main(argv), out


# ----------------------------------------------------------------------------------------------- the schedule
def test_stage_cap_derivation():
    cur = CurriculumConfig(stages=6, steps_per_stage=300, final_share=0.3)
    assert cur.stage_cap(700) == 81  # floor(0.7 x 700 / 6): the final stage starts by step 486, 214 steps left
    assert cur.stage_cap(100_000) == 300  # steps_per_stage fits: it stays
    assert CurriculumConfig(stages=7, steps_per_stage=500, final_share=0.3).stage_cap(1000) == 100  # not 99
    assert CurriculumConfig(stages=6, steps_per_stage=300).stage_cap(700) == 300  # no final_share: unchanged
    assert CurriculumConfig(stages=0, final_share=0.3).stage_cap(700) == 500
    cfg = load_config(None, ["train.steps=700", "curriculum.stages=6", "curriculum.steps_per_stage=300",
                             "curriculum.final_share=0.3", "curriculum.advance_below=0.02"])
    text = schedule(cfg)
    assert "at most 81 steps" in text and "from step 486 at the latest: at least 214 steps (31%" in text
    unscheduled = load_config(None, ["train.steps=700", "curriculum.stages=6", "curriculum.steps_per_stage=300"])
    assert "NOT reached" in schedule(unscheduled)
    with pytest.raises(ConfigError, match="final_share"):
        load_config(None, ["train.steps=10", "curriculum.stages=6", "curriculum.final_share=0.5"])
    with pytest.raises(ConfigError, match="final_share"):
        CurriculumConfig(final_share=1.0)


def test_the_clock_reaches_the_final_stage_in_time_and_may_advance_early():
    cur = CurriculumConfig(stages=3, steps_per_stage=300, final_share=0.3, advance_below=0.5, advance_window=2)
    clock = CurriculumClock(cur, 100, 0)  # cap floor(0.7 x 100 / 3) = 23
    stages = []
    for step in range(100):
        stages.append(clock.at(step))
        clock.advance(step + 1, {"ce": 5.0, "loss": 5.0}, None)  # never learned: each stage runs to its cap
    assert stages.index(4) == 69 and clock.final_steps == 31 and clock.trained == 4
    early = CurriculumClock(cur, 100, 0)
    seen = []
    for step in range(10):
        seen.append(early.at(step))
        early.advance(step + 1, {"ce": 0.1, "loss": 0.1}, None)  # learned: a stage ends after its 2-step window
    assert seen[:7] == [1, 1, 2, 2, 3, 3, 4]


# ----------------------------------------------------------------------------------------------- compare
def test_a_budget_too_small_for_the_curriculum_is_shown_unfinished(tmp_path, capsys):
    # 8 steps, 3 stages of 3 steps: the final stage (4) would start at step 9
    rc, out = _compare(tmp_path, "short", "student.curriculum.final_share=null")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NOT reached" in printed and "UNFINISHED: coconut (seed 0) ended in curriculum stage 3 of 4" in printed
    rows = {r.method: r for r in read_results(out / "results.json")[3]}
    assert rows["coconut"].extra["final_stage_reached"] is False and rows["coconut"].extra["stage"] == 3
    assert rows["coconut"].extra["scored"] == "last checkpoint" and rows["coconut"].extra["scored_step"] == 8
    assert rows["cot-sft"].extra["final_stage_reached"] is True
    md = (out / "results.md").read_text()
    assert "| coconut (unfinished: stage 3 of 4) |" in md  # the row table
    assert "| coconut (unfinished in 1 of 1 seeds) |" in md  # the mean over seeds
    assert "## Sanity checks" in md and "UNFINISHED" in md

    # The protocol's default schedules it: final_share 0.3 caps each stage at floor(0.7 x 8 / 3) = 1 step.
    rc, out = _compare(tmp_path, "scheduled")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "coconut: budget 8 steps x 16 = 128 examples; curriculum: 3 stages, each 1 steps" in printed
    row = next(r for r in read_results(out / "results.json")[3] if r.method == "coconut")
    e = row.extra
    assert e["final_stage_reached"] is True and e["stage"] == 4 and e["final_stage_steps"] == 5
    assert e["budget"] == {"steps": 8, "global_batch": 16, "examples": 128} and e["wall_s"] > 0
    assert 0 <= e["train_accuracy"] <= 1 and e["train_n"] == 8 and "constant_predictor" in e
    md = (out / "results.md").read_text()
    assert "unfinished" not in md.split("## Sanity")[0] and "| budget (steps x batch) |" in md
    assert "8 x 16" in md and "train wall s" in md


def _scripted_validation(script):
    """A stand-in for the loop's validation: the accuracy ``script`` gives each step."""

    def validation(cfg, method, module, tokenizer, valid, accelerator, sharded, step):
        return {"step": step, "valid_accuracy": script(cfg, step), "valid_generated_tokens": 1.0}

    return validation


def test_training_keeps_the_best_validation_checkpoint_of_the_final_stage(tmp_path, monkeypatch):
    # 1 stage of 2 steps, then the final stage from step 3: step 1's 0.9 comes before it and does not count
    accuracy = {1: 0.9, 2: 0.95, 3: 0.5, 4: 0.7, 5: 0.7, 6: 0.2}
    monkeypatch.setattr(loop, "_validation", _scripted_validation(lambda cfg, step: accuracy[step]))
    cfg = load_config(None, ["method=coconut", f"out_dir={tmp_path / 'run'}", "data.digits=[2,2]",
                             "data.train_size=40", "data.valid_size=8", "data.test_size=8", *TINY,
                             "train.steps=6", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=1",
                             "train.save_every=100", "train.keep_best=true", "curriculum.stages=1",
                             "curriculum.steps_per_stage=2", "coconut.latent_steps=1"])
    loop.train(cfg)
    assert read_best(cfg.out_dir) == {"step": 4, "valid_accuracy": 0.7}  # the first of the two 0.7s
    best = tmp_path / "run" / "checkpoints" / "best"
    assert load_state(best)["step"] == 4
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] .count("best") == 1


def test_a_resumed_run_drops_a_best_checkpoint_from_past_its_resume_point(tmp_path, monkeypatch):
    import shutil

    accuracy = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.9}
    monkeypatch.setattr(loop, "_validation", _scripted_validation(lambda cfg, step: accuracy[step]))
    run = tmp_path / "run"
    base = [f"out_dir={run}", "data.digits=[2,2]", "data.train_size=40", "data.valid_size=8", "data.test_size=8",
            *TINY, "train.global_batch=8", "train.micro_batch=8", "train.eval_every=1", "train.save_every=2",
            "train.keep_checkpoints=5", "train.keep_best=true"]
    loop.train(load_config(None, [*base, "train.steps=6", "train.stop_at=5"]))
    assert read_best(run) == {"step": 5, "valid_accuracy": 0.9}
    shutil.rmtree(run / "checkpoints" / "step-000005")  # as if killed after keeping step 5 but before its save
    accuracy.update({5: 0.6, 6: 0.5})
    loop.train(load_config(None, [*base, "train.steps=6"]))  # resumes from step 4: the kept step 5 is gone
    assert read_best(run) == {"step": 5, "valid_accuracy": 0.6}
    assert load_state(run / "checkpoints" / "step-000006")["wall_s"] > load_state(run / "checkpoints" /
                                                                                   "step-000004")["wall_s"] > 0


def test_compare_scores_the_best_final_stage_checkpoint(tmp_path, monkeypatch):
    # every run validates each step; the best final-stage step is 5 for the students, 2 for the teacher
    def script(cfg, step):
        return {"cot-sft": {2: 1.0}, "coconut": {5: 0.8, 1: 0.9}}[cfg.method].get(step, 0.1)

    monkeypatch.setattr(loop, "_validation", _scripted_validation(script))
    rc, out = _compare(tmp_path, "best", "train.eval_every=1")
    assert rc == 0
    rows = {r.method: r for r in read_results(out / "results.json")[3]}
    for method, step, acc in (("cot-sft", 2, 1.0), ("coconut", 5, 0.8)):
        e = rows[method].extra
        assert rows[method].checkpoint.endswith("checkpoints/best"), rows[method].checkpoint
        assert (e["scored_step"], e["valid_accuracy"], e["scored"]) == (step, acc, "best validation of the final stage")
    assert rows["coconut"].extra["teacher_valid_accuracy"] == 0.1  # the teacher's last validation record
    assert "TEACHER BELOW 99%" in (out / "results.md").read_text()


def test_lori_demo_keeps_scoring_its_last_checkpoint():
    from lori.commands.demo import demo_configs

    assert not any(c.train.keep_best for c in demo_configs(__import__("pathlib").Path("/tmp/x"), []).values())


def test_a_per_method_budget_needs_the_flag(tmp_path):
    teacher, student = _presets(tmp_path)
    args = (teacher, student, ["cot-sft", "no-cot", "coconut"], [0], tmp_path / "o")
    with pytest.raises(ConfigError, match="--per-method-budgets"):
        compare_configs(*args, [*TOY, "coconut:train.steps=12"])
    cfgs = compare_configs(*args, [*TOY, "coconut:train.steps=12"], per_method_budgets=True)[0]
    assert (cfgs["coconut"].train.steps, cfgs["no-cot"].train.steps) == (12, 8)
    # the teacher's own budget and a budget for every student are not per-method differences
    cfgs = compare_configs(*args, [*TOY, "cot-sft:train.steps=9", "student.train.global_batch=8"])[0]
    assert {c.train.global_batch for m, c in cfgs.items() if m != "cot-sft"} == {8}
    # the protocol's settings where the presets say nothing; a preset or an override still wins
    assert cfgs["coconut"].curriculum.final_share == 0.3 and cfgs["coconut"].curriculum.keep_positions
    assert cfgs["cot-sft"].train.keep_best and cfgs["cot-sft"].curriculum.final_share is None
    cfgs = compare_configs(*args, [*TOY, "curriculum.final_share=0.5", "train.keep_best=false"])[0]
    assert cfgs["coconut"].curriculum.final_share == 0.5 and not cfgs["coconut"].train.keep_best


# ----------------------------------------------------------------------------------------------- sanity checks
def _row(method, accuracy, ci, seed=0, **extra):
    return ResultRow(method, f"ckpt-{method}", accuracy, ci, 3.0, 1.0, 10.0, seed=seed, extra=extra)


def test_the_constant_predictor_flag():
    task = get_task("chains")
    gold = ["3"] * 3 + ["1", "2", "4", "5", "6", "7", "8"]  # the most common gold answer: 30%
    constant = [{"generated": "#### 3", "gold": g, "correct": g == "3"} for g in gold]
    assert answer_shares(constant, task) == (1.0, 0.3)
    varied = [{"generated": f"#### {g}", "gold": g, "correct": True} for g in gold]
    assert answer_shares(varied, task) == (0.3, 0.3)
    silent = [{"generated": "no answer", "gold": g, "correct": False} for g in gold]
    assert answer_shares(silent, task) == (0.0, 0.3)  # never answering is not one answer
    # always "3": 30% right, its Wilson lower bound under 30%: flagged
    assert constant_predictor(_row("no-cot", 0.3, (0.108, 0.603)), 1.0, 0.3)
    # as concentrated, but above chance (lower bound over the gold share): not flagged
    assert not constant_predictor(_row("lori", 0.9, (0.6, 0.98)), 0.3, 0.3)
    # at chance but spread over answers (the most common predicted answer rarer than the most common gold): not
    assert not constant_predictor(_row("codi", 0.1, (0.02, 0.4)), 0.2, 0.3)
    rows = [_row("no-cot", 0.3, (0.108, 0.603), constant_predictor=True, top_answer_share=1.0, gold_top_share=0.3),
            _row("icot-si", 0.5, (0.2, 0.8), final_stage_reached=False, stage=2, stages=3),
            _row("lori", 0.9, (0.6, 0.98), final_stage_reached=True, stage=4, stages=3)]
    found = warnings(rows)
    assert len(found) == 2 and found[0].startswith("CONSTANT PREDICTOR: no-cot (seed 0) gives 100.0%")
    assert found[1].startswith("UNFINISHED: icot-si (seed 0) ended in curriculum stage 2 of 4")
    assert "icot-si (unfinished: stage 2 of 4)" in markdown_table(rows)
    assert "icot-si (unfinished in 1 of 1 seeds)" in aggregate_table(rows)
    assert "lori (unfinished" not in markdown_table(rows)


def test_the_plot_marks_unfinished_runs(tmp_path, monkeypatch):
    from lori.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [_row("icot-si", 0.5, (0.2, 0.8), final_stage_reached=False, stage=2, stages=3),
            _row("lori", 0.9, (0.6, 0.98), final_stage_reached=True, stage=4, stages=3),
            _row("codi", 0.4, (0.2, 0.6), seed=0, final_stage_reached=False, stage=1, stages=3),
            _row("codi", 0.5, (0.2, 0.6), seed=1, final_stage_reached=True, stage=4, stages=3)]
    plots.plot_accuracy_vs_tokens(rows, tmp_path / "p.png")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "icot-si (seed 0) (unfinished)" in labels and "lori (seed 0)" in labels
    assert "codi (mean of 2 seeds; unfinished in 1)" in labels
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert len(hollow) == 3  # the unfinished icot-si and codi seed 0, and codi's mean


# ----------------------------------------------------------------------------------------------- iCoT-SI positions
def test_icot_si_keeps_the_teachers_positions_when_asked():
    base = ["method=icot-si", "data.task=chains", "data.chain_steps=3", "data.train_size=20", "data.valid_size=4",
            "data.test_size=4", "curriculum.stages=3", "curriculum.remove_per_stage=5",
            "curriculum.removal_smoothing_lambda=null", *TINY]
    cfg = load_config(None, [*base, "curriculum.keep_positions=true"])
    ex = load_split(cfg.data, "train")[0]
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    s = segments(ex, tok, False)
    P, R = len(s.prompt), len(s.rationale)
    assert R == 15  # three `<< b = 7 >>` steps of 5 tokens
    render = METHODS["icot-si"].render
    for stage, gap in ((1, 5), (2, 10), (3, 15), (4, 15)):  # the final stage (4): stages x remove_per_stage
        item = render(ex, tok, cfg, stage)
        assert item["positions"][:P] == list(range(P))
        assert item["positions"][P:] == list(range(P + gap, P + gap + item["n_target"])), stage
    batch = METHODS["icot-si"].collate([render(ex, tok, cfg, 2)], tok.pad_token_id)
    assert batch["position_ids"][0, P].item() == P + 10
    assert METHODS["icot-si"].generation_kwargs(None, tok, cfg) == {"answer_gap": 15}
    plain = load_config(None, base)  # off (the default): no positions, plain decoding
    assert "positions" not in render(ex, tok, plain, 2) and METHODS["icot-si"].generation_kwargs(None, tok, plain) == {}

    # generation with the gap feeds the answer where training put it
    torch.manual_seed(0)
    lm = tiny_model(cfg.model, tok, max_positions=128).eval()
    g = greedy_generate(lm, [s.prompt], eos_id=-1, pad_id=tok.pad_token_id, max_new_tokens=2, answer_gap=15)
    first, second = g.tokens[0]
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([s.prompt + [first]]),
                    position_ids=torch.tensor([list(range(P)) + [P + 15]])).logits
    assert logits[0, -1].argmax().item() == second


def test_codi_takes_the_identity_projector_as_coconut_and_lori_do():
    for method, section in (("codi", "codi"), ("coconut", "coconut"), ("lori", "lori")):
        cfg = load_config(None, [f"method={method}", f"{section}.projector=identity", "curriculum.stages=2", *TINY])
        assert METHODS[method].thoughts.projector(cfg) == "identity"


# ----------------------------------------------------------------------------------------------- lori tune
def test_tune_grid_sizes_must_agree(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"common": {"train.lr": [1e-3, 5e-4]},
                                    "methods": {"coconut": {"curriculum.advance_below": [0.02, 0.1]}}}))
    with pytest.raises(ConfigError, match="differ in size .*coconut 4, no-cot 2"):
        read_grid(grid, ["coconut", "no-cot"])
    assert len(read_grid(grid, ["coconut"])["coconut"]) == 4
    grid.write_text(yaml.safe_dump({"common": {"train.steps": [10, 20]}}))
    with pytest.raises(ConfigError, match="train.steps: the budget"):
        read_grid(grid, ["coconut"])
    points = [{"point": 0, "valid_accuracy": 0.9, "final_stage_reached": False},
              {"point": 1, "valid_accuracy": 0.5, "final_stage_reached": True},
              {"point": 2, "valid_accuracy": 0.5, "final_stage_reached": True}]
    assert choose(points)["point"] == 1  # an unfinished run is never chosen over a finished one; ties: the first


def test_tune_writes_scores_and_recipes_that_compare_applies(tmp_path, capsys):
    teacher, student = _presets(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"common": {"train.lr": [1.0e-3]},
                                    "methods": {"no-cot": {"train.weight_decay": [0.0, 0.1]},
                                                "coconut": {"curriculum.final_share": [0.3, 0.5]}}}))
    out = tmp_path / "tune"
    argv = ["tune", "--teacher", str(teacher), "--student", str(student), "--methods", "no-cot,coconut",
            "--grid", str(grid), "--out", str(out), *TOY]
    assert main(argv) == 0
    result = json.loads((out / "tune.json").read_text())
    assert result["split"] == "valid" and set(result["methods"]) == {"no-cot", "coconut"}
    for m, points in result["methods"].items():
        assert len(points) == 2 and all(p["n"] == 16 and 0 <= p["valid_accuracy"] <= 1 for p in points)
        assert (out / m / "00" / "eval-valid").is_dir() and not (out / m / "00" / "eval-test").exists()
    recipes = yaml.safe_load((out / "recipes.yaml").read_text())
    chosen = result["chosen"]
    assert recipes == {m: result["methods"][m][chosen[m]]["settings"] for m in ("no-cot", "coconut")}
    assert "| coconut | 1 | train.lr=0.001, curriculum.final_share=0.5 |" in (out / "tune.md").read_text()
    # a second call reuses everything
    capsys.readouterr()
    assert main(argv) == 0
    assert "=== " not in capsys.readouterr().out

    from lori.commands.compare import recipe_overrides

    overrides = recipe_overrides(out / "recipes.yaml")
    cfgs = compare_configs(teacher, student, ["cot-sft", "no-cot", "coconut"], [0], tmp_path / "c",
                           [*overrides, *TOY])[0]
    assert cfgs["coconut"].curriculum.final_share == recipes["coconut"]["curriculum.final_share"]
    assert cfgs["no-cot"].train.weight_decay == recipes["no-cot"]["train.weight_decay"]
    # a comparison of some of the tuned methods takes the same file: the others' recipes are left out
    only = recipe_overrides(out / "recipes.yaml", ["cot-sft", "no-cot"])
    assert only and all(o.startswith("no-cot:") for o in only)
    compare_configs(teacher, student, ["cot-sft", "no-cot"], [0], tmp_path / "c", [*only, *TOY])


def test_config_defaults_keep_every_other_run_as_it_was():
    assert Config().curriculum.final_share is None and not Config().curriculum.keep_positions
    assert not TrainConfig().keep_best
