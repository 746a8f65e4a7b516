"""``lori compare``: several methods x several seeds on one task under one budget, in one table.

For every seed ``s`` the pipeline of :mod:`lori.pipeline` trains the teacher preset in ``OUT/seed-s/cot-sft`` (its
evaluation is the cot-sft row) and one student per other method in ``OUT/seed-s/METHOD``, initialised from that
seed's teacher (LoRi through ``OUT/seed-s/lori-cache``). Only ``train.seed`` changes with the seed; data and
evaluation problems are the same for every run. Finished runs and evaluations are reused (an evaluation only when
it is of the test set the config names now), so an interrupted compare continues where it stopped. Writes
``OUT/results.json`` (a row per method and seed), ``OUT/results.md`` (the rows, then the mean over seeds with a 95%
Student-t interval) and ``OUT/accuracy_vs_tokens.png``; details in docs/evaluation.md (``lori compare``).
The protocol (:data:`PROTOCOL`, docs/evaluation.md): one budget for the students, curricula whose final stage gets
``curriculum.final_share`` of it, iCoT-SI at the teacher's positions, the best final-stage validation checkpoint
scored; the sanity checks of :mod:`lori.evaluation.sanity` are printed and end results.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..config import Config, load_tree, to_dict
from ..errors import ConfigError, LoriError
from ..evaluation.digits import DigitShares, digit_shares, digit_table, mean_shares, read_predictions
from ..evaluation.plots import plot_accuracy_vs_tokens, plot_answer_token_ce
from ..evaluation.results import (ResultRow, aggregate_table, check_one_test_set, markdown_table, write_results)
from ..evaluation.sanity import TEACHER_MIN, answer_shares, constant_predictor, warnings
from ..pipeline import (BUDGET_KEYS, TEACHER, evaluate_current, parse_methods, pipeline_configs, recipe_overrides,
                        run_facts, best_checkpoint, train_accuracy, train_runs, with_protocol)
from ..tasks import TASKS
from ..training.checkpoint import read_best
from ..training.curriculum import schedule

TAG = "lori compare"
SINGLE_PROCESS = True
POSITIONAL = "overrides"
EPILOG = """\
Per seed S: the teacher trains in OUT/seed-S/cot-sft (train.seed=S); every other method trains in OUT/seed-S/METHOD
from the student preset with method=METHOD, train.seed=S and model.init_from = that teacher (LoRi also distils from
it through OUT/seed-S/lori-cache). The data seed stays fixed: every run sees the same problems. Finished runs and
their evaluations are reused, so an interrupted compare continues.

example (the 4x4 six-method table; hours on a CPU):
  lori compare --teacher configs/mult4x4-cot-sft.yaml --student configs/mult4x4-lori.yaml \\
      --methods no-cot,cot-sft,icot-si,coconut,codi,lori --seeds 0,1 --out out/compare-4x4
"""


def add_arguments(c) -> None:
    c.add_argument("--teacher", required=True, help="YAML preset of the CoT-SFT teacher (the cot-sft row)")
    c.add_argument("--student", required=True, help="YAML preset of the students (method set per run; the "
                                                    "curriculum, budget and method sections apply to all)")
    c.add_argument("--methods", default="no-cot,cot-sft,icot-si,coconut,codi,lori",
                   help="comma-separated methods (default: all six: no-cot,cot-sft,icot-si,coconut,codi,lori)")
    c.add_argument("--seeds", default="0,1", help="comma-separated training seeds (train.seed; default: 0,1)")
    c.add_argument("--out", required=True, help="output folder: OUT/seed-S/METHOD runs, results.json, results.md, "
                                                "accuracy_vs_tokens.png")
    c.add_argument("--recipes", help="recipes.yaml of `lori tune` (METHOD: {key: value}): each method's tuned "
                                      "settings, applied before the overrides")
    c.add_argument("--per-method-budgets", action="store_true",
                   help="allow METHOD: overrides of train.steps / train.global_batch (the students then differ in "
                        "budget; every row shows its own)")
    c.add_argument("overrides", nargs="*", help="dotted overrides for every run, or prefixed: teacher./student. "
                                                "for one side, METHOD: for one method (codi:curriculum.stages=0)")


def run(args) -> None:
    recipes = recipe_overrides(args.recipes, parse_methods(args.methods)) if args.recipes else []
    run_compare(args.teacher, args.student, args.methods, args.seeds, Path(args.out), [*recipes, *args.overrides],
                per_method_budgets=args.per_method_budgets)


def parse_seeds(text: str | list[int]) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct non-negative integers)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        seeds = [int(s) for s in (str(x).strip() for x in items) if s]
    except ValueError:
        raise ConfigError(f"--seeds: expected integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct integers >= 0, e.g. 0,1,2; got {text!r}")
    return seeds


def _first_difference(a: dict, b: dict, prefix: str) -> tuple[str, object, object] | None:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{prefix}.{key}", a.get(key), b.get(key)
    return None


def check_budgets(cfgs: dict[str, Config], where: str, allowed: bool) -> None:
    """Refuse students whose budgets (train.steps x train.global_batch) differ, unless ``allowed``
    (--per-method-budgets); the teacher (cot-sft) trains on its own preset's budget, which every student starts from."""
    budgets = {m: (c.train.steps, c.train.global_batch) for m, c in cfgs.items() if m != TEACHER}
    if allowed or len(set(budgets.values())) <= 1:
        return
    a, ba = next(iter(budgets.items()))
    b, bb = next((m, v) for m, v in budgets.items() if v != ba)
    raise ConfigError(f"{where}: the {a} student trains {ba[0]} steps x {ba[1]} but the {b} student {bb[0]} x {bb[1]}; "
                      "a comparison gives every method one budget: drop the METHOD: override of "
                      f"{' / '.join(BUDGET_KEYS)}, or pass --per-method-budgets to compare them anyway")


def compare_configs(teacher: str | Path, student: str | Path, methods: list[str], seeds: list[int], out: Path,
                    overrides: list[str], per_method_budgets: bool = False) -> dict[int, dict[str, Config]]:
    """``{seed: {"cot-sft": teacher, METHOD: student, ...}}`` for every seed; the teacher is always there (the
    students start from it) even when cot-sft is not among ``methods``. Every config is built and checked before
    anything runs; the teacher and the students must share their ``data`` and ``eval`` sections (the same
    problems, scored the same way; with generated training data the students may train on fewer problems), which
    shared overrides keep true."""
    t_tree, s_tree = with_protocol(load_tree(teacher), "teacher"), with_protocol(load_tree(student), "student")
    where = f"--teacher {teacher} / --student {student}"
    out = Path(out)
    cfgs = {s: pipeline_configs(t_tree, s_tree, overrides, out / f"seed-{s}", methods, seed=s, where=where)
            for s in seeds}
    check_budgets(cfgs[seeds[0]], where, per_method_budgets)
    ref = cfgs[seeds[0]][TEACHER]
    for name, cfg in cfgs[seeds[0]].items():
        for section in ("data", "eval"):
            a, b = to_dict(getattr(ref, section)), to_dict(getattr(cfg, section))
            if section == "data" and ref.data.train_file is None and cfg.data.train_file is None:
                # generated training problems: the students may train on fewer (the valid and test sets, drawn
                # first, do not depend on it); everything else must agree
                a, b = {**a, "train_size": None}, {**b, "train_size": None}
            diff = _first_difference(a, b, section)
            if diff is not None:
                key, t_value, s_value = diff
                raise ConfigError(f"{where}: {key} is {t_value!r} for the teacher but {s_value!r} for the {name} "
                                  "student; the compared runs must see the same problems and evaluation: align the "
                                  f"presets or override {key} for both sides (no teacher./student. prefix)")
    return cfgs


def last_validation(cfg: Config) -> float | None:
    """The validation accuracy of the run's last validation record (metrics.jsonl), None when it has none."""
    path = Path(cfg.out_dir) / "metrics.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    found = [r["valid_accuracy"] for r in records if "valid_accuracy" in r]
    return found[-1] if found else None


def protocol_checks(cfg: Config, row: ResultRow, predictions: Path, teacher_valid: float | None, scorer) -> ResultRow:
    """``row`` with what the protocol records beside its accuracy in its ``extra``: :func:`lori.pipeline.run_facts`,
    the scored step and its validation accuracy, the training accuracy, the answer shares and the constant-predictor
    flag (lori.evaluation.sanity), and the validation accuracy of the teacher the run starts from."""
    ckpt = Path(row.checkpoint)
    best = read_best(cfg.out_dir) if cfg.train.keep_best else None
    train_acc, train_n = train_accuracy(cfg, ckpt)
    top, gold_top = answer_shares(read_predictions(predictions), scorer)
    return replace(row, extra={
        **row.extra, **run_facts(cfg),
        "scored_step": best["step"] if best else int(ckpt.name.removeprefix("step-")),
        "scored": "best validation of the final stage" if best else "last checkpoint",
        "valid_accuracy": best["valid_accuracy"] if best else last_validation(cfg),
        "train_accuracy": round(train_acc, 6), "train_n": train_n, "top_answer_share": round(top, 6),
        "gold_top_share": round(gold_top, 6), "constant_predictor": constant_predictor(row, top, gold_top),
        "teacher_valid_accuracy": teacher_valid})


def run_compare(teacher: str | Path, student: str | Path, methods: str | list[str], seeds: str | list[int],
                out: Path, overrides: list[str], per_method_budgets: bool = False) -> Path:
    methods, seeds, out = parse_methods(methods), parse_seeds(seeds), Path(out)
    cfgs = compare_configs(teacher, student, methods, seeds, out, overrides, per_method_budgets)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{TAG}] methods {', '.join(methods)} x seeds {', '.join(map(str, seeds))} -> {out}")
    for name, cfg in cfgs[seeds[0]].items():
        print(f"[{TAG}] {name}: budget {cfg.train.steps} steps x {cfg.train.global_batch} = "
              f"{cfg.train.steps * cfg.train.global_batch:,} examples; {schedule(cfg)}"
              + ("" if cfg.train.keep_best else "; scored: its last checkpoint"))
    for seed in seeds:
        # The teacher always trains (the students start from it); it is evaluated only when cot-sft is compared.
        train_runs(cfgs[seed], TAG, label=f"seed {seed} / ")

    ref = cfgs[seeds[0]][TEACHER]
    scorer = TASKS[ref.data.task]
    by_run: dict[tuple[str, int], ResultRow] = {}
    digits: dict[tuple[str, int], DigitShares] = {}
    sizes = set()
    alarms = []
    for seed in seeds:
        teacher_valid = last_validation(cfgs[seed][TEACHER])
        if teacher_valid is not None and teacher_valid < TEACHER_MIN:
            alarms.append(f"TEACHER BELOW {100 * TEACHER_MIN:.0f}%: the seed-{seed} teacher scores "
                          f"{100 * teacher_valid:.1f}% on validation; its students distil a teacher that does not "
                          "solve the task")
        for method in methods:
            cfg = cfgs[seed][method]
            row, n, predictions = evaluate_current(cfg, seed=seed, tag=TAG, label=f"seed {seed} / ",
                                                   checkpoint=best_checkpoint(cfg))
            row = protocol_checks(cfg, row, predictions, teacher_valid, scorer)
            if hasattr(scorer, "digit_matches"):  # digit-string answers: the per-digit diagnostic too
                digits[method, seed] = digit_shares(read_predictions(predictions), scorer)
                row = replace(row, extra={**row.extra, "digit_accuracy": round(digits[method, seed].digits, 6)})
            by_run[method, seed] = row
            sizes.add(n)
    rows = [by_run[m, s] for m in methods for s in seeds]  # grouped by method, seeds in order
    # The data and eval sections are checked to agree, but a reused evaluation may predate a change of a data file:
    # rows of different test sets are never tabled together (one line naming two of them and what differs).
    check_one_test_set(rows)
    if len(sizes) != 1:  # pragma: no cover - the test sets were just checked to be one
        raise LoriError(f"the runs were evaluated on different numbers of problems: {sorted(sizes)}")
    task, split, n = ref.data.task, ref.eval.split, sizes.pop()
    alarms += warnings(rows)
    section = ("\n## Sanity checks\n\n" + ("\n".join(f"- {a}" for a in alarms) if alarms else "none failed") +
               f"\n\nChecked: every teacher >= {100 * TEACHER_MIN:.0f}% on validation; every curriculum finished "
               "(final stage reached); no constant predictor (its most common answer at least as common as the most "
               "common gold answer, at chance accuracy: Wilson lower bound <= that gold share). Per row in "
               "results.json's extra: final_stage_reached, stage, scored_step, valid_accuracy, train_accuracy, "
               "top_answer_share, gold_top_share, constant_predictor, teacher_valid_accuracy, budget, wall_s.\n")
    if digits:
        table = digit_table({m: mean_shares([digits[m, s] for s in seeds]) for m in methods})
        section += (f"\n## Answer digits (a diagnostic; exact match above is the accuracy)\n\n{table}\n\n"
                   "Mean over seeds of the share of gold digits right at their place (d1 = least significant, the "
                   "first one written), from each run's predictions; per run in results.json as "
                   "extra.digit_accuracy.\n")
    write_results(out, task, split, n, rows, aggregate=True, appendix=section)
    what = f"{'x'.join(map(str, ref.data.digits))} multiplication" if task == "multiplication" else task
    plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png",
                            title=f"{what}, {split} (n = {n}), {len(seeds)} seed{'s' * (len(seeds) > 1)}")
    # Per-answer-token training cross-entropy of every trained run (the teacher's too), mean over seeds
    digit_plot = plot_answer_token_ce(
        {m: [Path(cfgs[s][m].out_dir) / "metrics.jsonl" for s in seeds] for m in methods},
        out / "answer_token_ce.png", title=f"{what}: training cross-entropy of each answer token")
    print("\n" + markdown_table(rows))
    print(f"\nMean over seeds ({task} / {split}, n = {n}; accuracy ± 95% t-interval over seeds):\n")
    print(aggregate_table(rows))
    if digits:
        print(f"\nAnswer digits, mean over seeds (a diagnostic):\n\n{table}")
    print(f"\n[{TAG}] sanity checks: " + ("none failed" if not alarms else f"{len(alarms)} FAILED"))
    for a in alarms:
        print(f"[{TAG}] WARNING: {a}")
    print(f"\n[{TAG}] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy_vs_tokens.png'}"
          + (f", {digit_plot}" if digit_plot else ""))
    return out
