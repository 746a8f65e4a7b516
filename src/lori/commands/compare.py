"""``lori compare``: several methods x several seeds on one task under one budget, in one table.

For every seed ``s`` the pipeline of :mod:`lori.pipeline` trains the teacher preset in ``OUT/seed-s/cot-sft`` (its
evaluation is the cot-sft row) and one student per other method in ``OUT/seed-s/METHOD``, initialised from that
seed's teacher (LoRi through ``OUT/seed-s/lori-cache``). Only ``train.seed`` changes with the seed; data and
evaluation problems are the same for every run. Finished runs and evaluations are reused (an evaluation only when
it is of the test set the config names now), so an interrupted compare continues where it stopped. Writes
``OUT/results.json`` (a row per method and seed), ``OUT/results.md`` (the rows, then the mean over seeds with a 95%
Student-t interval) and ``OUT/accuracy_vs_tokens.png``; details in docs/evaluation.md (``lori compare``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import Config, load_tree, to_dict
from ..errors import ConfigError, LoriError
from ..evaluation.digits import DigitShares, digit_shares, digit_table, mean_shares, read_predictions
from ..evaluation.plots import plot_accuracy_vs_tokens, plot_answer_token_ce
from ..evaluation.results import (ResultRow, aggregate_table, check_one_test_set, markdown_table, write_results)
from ..methods import METHODS
from ..pipeline import TEACHER, evaluate_current, pipeline_configs, train_runs
from ..tasks import TASKS

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
    c.add_argument("overrides", nargs="*", help="dotted overrides for every run, or prefixed: teacher./student. "
                                                "for one side, METHOD: for one method (codi:curriculum.stages=0)")


def run(args) -> None:
    run_compare(args.teacher, args.student, args.methods, args.seeds, Path(args.out), args.overrides)


def parse_methods(text: str | list[str]) -> list[str]:
    """``"no-cot,lori"`` -> ``["no-cot", "lori"]``; every name must be a key of ``lori.methods.METHODS``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    methods = [m.strip() for m in items if m.strip()]
    if not methods:
        raise ConfigError("--methods: name at least one method")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods: unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods: a method is listed twice in {','.join(methods)}")
    return methods


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


def compare_configs(teacher: str | Path, student: str | Path, methods: list[str], seeds: list[int], out: Path,
                    overrides: list[str]) -> dict[int, dict[str, Config]]:
    """``{seed: {"cot-sft": teacher, METHOD: student, ...}}`` for every seed; the teacher is always there (the
    students start from it) even when cot-sft is not among ``methods``. Every config is built and checked before
    anything runs; the teacher and the students must share their ``data`` and ``eval`` sections (the same
    problems, scored the same way; with generated training data the students may train on fewer problems), which
    shared overrides keep true."""
    t_tree, s_tree = load_tree(teacher), load_tree(student)
    where = f"--teacher {teacher} / --student {student}"
    out = Path(out)
    cfgs = {s: pipeline_configs(t_tree, s_tree, overrides, out / f"seed-{s}", methods, seed=s, where=where)
            for s in seeds}
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


def run_compare(teacher: str | Path, student: str | Path, methods: str | list[str], seeds: str | list[int],
                out: Path, overrides: list[str]) -> Path:
    methods, seeds, out = parse_methods(methods), parse_seeds(seeds), Path(out)
    cfgs = compare_configs(teacher, student, methods, seeds, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{TAG}] methods {', '.join(methods)} x seeds {', '.join(map(str, seeds))} -> {out}")
    for seed in seeds:
        # The teacher always trains (the students start from it); it is evaluated only when cot-sft is compared.
        train_runs(cfgs[seed], TAG, label=f"seed {seed} / ")

    ref = cfgs[seeds[0]][TEACHER]
    scorer = TASKS[ref.data.task]
    by_run: dict[tuple[str, int], ResultRow] = {}
    digits: dict[tuple[str, int], DigitShares] = {}
    sizes = set()
    for seed in seeds:
        for method in methods:
            row, n, predictions = evaluate_current(cfgs[seed][method], seed=seed, tag=TAG, label=f"seed {seed} / ")
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
    section = ""
    if digits:
        table = digit_table({m: mean_shares([digits[m, s] for s in seeds]) for m in methods})
        section = (f"\n## Answer digits (a diagnostic; exact match above is the accuracy)\n\n{table}\n\n"
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
    print(f"\n[{TAG}] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy_vs_tokens.png'}"
          + (f", {digit_plot}" if digit_plot else ""))
    return out
