"""``lori tune``: each student method's recipe chosen on the validation split, the same grid size for every method.

The grid file (YAML) names settings every method tries (``common``) and each method's own knobs (``methods``); a
method's grid is the product of both, and every tuned method's grid must have the same size (a method with fewer
knobs would get fewer tries). The budget (``train.steps``, ``train.global_batch``) and the seed are not tunable: the
recipe is chosen under the budget the comparison uses. One teacher (``OUT/cot-sft``, the compare protocol's, one
seed) is trained; every grid point trains a student in ``OUT/METHOD/NN`` under :data:`lori.pipeline.PROTOCOL`
and its scored checkpoint (the best validation checkpoint of the final stage) is evaluated on the validation split.
The chosen point per method is the most accurate among those that reached their final stage (ties: the first in
grid order). Writes ``OUT/tune.json`` (every point's settings, validation accuracy and stage), ``OUT/tune.md`` and
``OUT/recipes.yaml`` (the chosen settings per method), which ``lori compare --recipes`` applies. Finished runs and
evaluations are reused, so an interrupted tune continues.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import yaml

from ..config import load_tree
from ..errors import ConfigError
from ..methods import METHODS
from ..pipeline import (BUDGET_KEYS, TEACHER, evaluate_current, method_override, parse_methods, pipeline_configs,
                        run_facts, best_checkpoint, train_runs, with_protocol)
from ..utils import atomic_write_text, check_writable

TAG = "lori tune"
SINGLE_PROCESS = True
POSITIONAL = "overrides"
FIXED_KEYS = (*BUDGET_KEYS, "train.seed", "method", "out_dir")  # what a grid may not vary
EPILOG = """\
grid file:
  common:                       # every method tries each combination of these
    train.lr: [1.0e-3, 3.0e-4]
    curriculum.final_share: [0.3, 0.5]
  methods:                      # each method's own knobs; every method's product must have the same size
    icot-si: {curriculum.remove_per_stage: [1, 5]}
    codi: {codi.projector: [identity, codi]}
    coconut: {curriculum.advance_below: [0.02, 0.1]}
    lori: {lori.step_weight: [1.0, 0.5]}

example:
  lori tune --teacher configs/chains-cot-sft.yaml --student configs/chains-lori.yaml \\
      --methods icot-si,coconut,codi,lori --grid grid.yaml --out out/tune-chains
  lori compare ... --recipes out/tune-chains/recipes.yaml
"""


def add_arguments(t) -> None:
    t.add_argument("--teacher", required=True, help="YAML preset of the CoT-SFT teacher")
    t.add_argument("--student", required=True, help="YAML preset of the students (method set per run)")
    t.add_argument("--methods", required=True, help="comma-separated student methods to tune")
    t.add_argument("--grid", required=True, help="YAML grid: common: {KEY: [values]}, methods: {METHOD: {KEY: [...]}}")
    t.add_argument("--seed", type=int, default=0, help="training seed of every run (train.seed; default 0)")
    t.add_argument("--out", required=True, help="output folder: OUT/cot-sft, OUT/METHOD/NN, tune.json, tune.md, "
                                                "recipes.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, as lori compare's (teacher./student./METHOD:)")


def run(args) -> None:
    run_tune(args.teacher, args.student, args.methods, args.grid, Path(args.out), args.overrides, seed=args.seed)


def _values(table, where: str) -> dict[str, list]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to lists of values")
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values, e.g. [1.0e-3, 3.0e-4]")
        if key in FIXED_KEYS:
            raise ConfigError(f"{where}.{key}: the budget, seed and run paths are fixed in a tuning grid (the recipe "
                              "is chosen under the comparison's budget); remove it")
    return dict(table)


def read_grid(path: str | Path, methods: list[str]) -> dict[str, list[dict]]:
    """``{METHOD: [point, ...]}``, each point ``{dotted key: value}``: the product of ``common`` and the method's own
    knobs, in grid order. Refuses a bad file and grids of different sizes, naming them."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid {path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict) or set(tree) - {"common", "methods"}:
        raise ConfigError(f"--grid {path}: expected a YAML mapping with the keys common and methods")
    common = _values(tree.get("common"), f"{path}: common")
    own = tree.get("methods") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{path}: methods: expected METHOD: {{KEY: [values]}}")
    unknown = sorted(set(own) - set(METHODS))
    if unknown:
        raise ConfigError(f"{path}: methods.{unknown[0]}: not a method; choose from {', '.join(METHODS)}")
    grids = {}
    for m in methods:
        table = {**common, **_values(own.get(m), f"{path}: methods.{m}")}
        keys = list(table)
        grids[m] = [dict(zip(keys, combo)) for combo in itertools.product(*(table[k] for k in keys))]
    sizes = {m: len(g) for m, g in grids.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{m} {n}" for m, n in sizes.items())
        raise ConfigError(f"{path}: the methods' grids differ in size ({listed}); give every method as many "
                          "combinations (each tries as many recipes)")
    return grids


def run_tune(teacher: str | Path, student: str | Path, methods: str | list[str], grid: str | Path, out: Path,
             overrides: list[str], seed: int = 0) -> Path:
    methods, out = parse_methods(methods), Path(out)
    if TEACHER in methods:
        raise ConfigError(f"--methods: {TEACHER} is the teacher every student starts from; it is not tuned here")
    grids = read_grid(grid, methods)
    t_tree, s_tree = with_protocol(load_tree(teacher), "teacher"), with_protocol(load_tree(student), "student")
    where = f"--teacher {teacher} / --student {student}"
    shared = [*overrides, "eval.split=valid"]  # the recipe is chosen on validation; test stays untouched
    runs: dict[str, list] = {}
    for m, points in grids.items():  # every config is built (and refused) before anything trains
        runs[m] = []
        for i, point in enumerate(points):
            knobs = [method_override(m, k, v) for k, v in point.items()]
            cfgs = pipeline_configs(t_tree, s_tree, shared + knobs, out, [m], seed=seed,
                                    where=f"{where}, grid point {m} #{i}")
            cfg, run_dir = cfgs[m], out / m / f"{i:02d}"
            cache = str(run_dir / "lori-cache") if cfg.lori.cache_dir else None  # its own: the grid may vary lori.*
            runs[m].append((point, cfgs[TEACHER], replace(cfg, out_dir=str(run_dir),
                                                          lori=replace(cfg.lori, cache_dir=cache))))
    check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{TAG}] {', '.join(methods)}: {len(next(iter(grids.values())))} grid points each, scored on validation "
          f"-> {out}")
    teacher_cfg = runs[methods[0]][0][1]
    train_runs({TEACHER: teacher_cfg}, TAG)

    results: dict[str, list[dict]] = {}
    for m in methods:
        results[m] = []
        for i, (point, _, cfg) in enumerate(runs[m]):
            train_runs({m: cfg}, TAG, label=f"{m} #{i} ")
            row, n, _ = evaluate_current(cfg, tag=TAG, label=f"{m} #{i} ", checkpoint=best_checkpoint(cfg))
            facts = run_facts(cfg)
            results[m].append({"point": i, "settings": point, "valid_accuracy": row.accuracy, "n": n,
                               "final_stage_reached": facts["final_stage_reached"], "stage": facts["stage"],
                               "wall_s": facts["wall_s"], "run": cfg.out_dir})
    chosen = {m: choose(results[m]) for m in methods}
    payload = {"split": "valid", "seed": seed, "grid": str(grid), "methods": results,
               "chosen": {m: c["point"] for m, c in chosen.items()}}
    atomic_write_text(out / "tune.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "recipes.yaml", yaml.safe_dump({m: c["settings"] for m, c in chosen.items()},
                                                           sort_keys=False))
    md = tune_table(results, chosen)
    atomic_write_text(out / "tune.md", f"# lori tune: validation accuracy per grid point\n\n{md}\n")
    print("\n" + md)
    for m, c in chosen.items():
        if c["final_stage_reached"] is False:
            print(f"[{TAG}] WARNING: no {m} grid point reached its final stage; its recipe is an unfinished run's")
    print(f"\n[{TAG}] wrote {out / 'tune.json'}, {out / 'tune.md'}, {out / 'recipes.yaml'}")
    return out


def choose(points: list[dict]) -> dict:
    """The most accurate point among those that reached their final stage (all of them when none did); ties go to
    the first in grid order."""
    pool = [p for p in points if p["final_stage_reached"] is not False] or points
    return max(pool, key=lambda p: (p["valid_accuracy"], -p["point"]))


def tune_table(results: dict[str, list[dict]], chosen: dict[str, dict]) -> str:
    lines = ["| method | point | settings | valid accuracy % | final stage reached | chosen |",
             "|---|---:|---|---:|---|---|"]
    for m, points in results.items():
        for p in points:
            settings = ", ".join(f"{k}={v}" for k, v in p["settings"].items())
            reached = {None: "n/a", True: "yes", False: "NO"}[p["final_stage_reached"]]
            lines.append(f"| {m} | {p['point']} | {settings} | {100 * p['valid_accuracy']:.1f} | {reached} | "
                         f"{'yes' if p is chosen[m] else ''} |")
    return "\n".join(lines)
