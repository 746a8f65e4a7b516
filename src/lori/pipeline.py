"""The teacher -> students pipeline shared by ``lori demo`` and ``lori compare``.

``OUT/cot-sft`` holds a CoT-SFT teacher and ``OUT/METHOD`` one student per method, initialised from the teacher (a
LoRi student distils from it through ``OUT/lori-cache``). :func:`pipeline_configs` builds the configs from a teacher
and a student tree plus overrides (``teacher.``/``student.`` for one side, ``METHOD:`` for one run);
:func:`with_protocol` adds ``lori compare``'s protocol (:data:`PROTOCOL`); :func:`train_runs` trains them in order,
reusing finished runs; :func:`evaluate_run` evaluates a run's final checkpoint (or :func:`best_checkpoint`), reusing
an evaluation of the same checkpoint and settings; :func:`run_facts` and :func:`train_accuracy` read what a run
reached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import Config, apply_overrides, config_from_dict, parse_overrides, to_dict
from .errors import ConfigError
from .data.splits import load_split
from .evaluation.evaluate import evaluate
from .evaluation.results import ResultRow, read_results, row_mismatch, test_set_difference, write_results
from .evaluation.scoring import evaluate_checkpoint, test_set_identity
from .methods import METHODS
from .methods.lori.teacher import precompute
from .models.checkpoint_folders import checkpoint_dir, list_checkpoints, resolve_checkpoint, weights_digest
from .models.loading import TINY_ARCH_KEYS
from .student import inference_settings, load_student
from .training.checkpoint import BEST_DIR, STATE_FILE, load_state, read_best
from .training.identity import check_reuse
from .training.loop import train

TEACHER = "cot-sft"  # the teacher's method and folder name; its evaluation is the cot-sft row
SIDES = ("teacher", "student")


# The protocol's settings, set in a preset tree that does not set the key itself (an override still wins):
# (side, dotted key, value); side None = the teacher and the students.
PROTOCOL = (("student", "curriculum.final_share", 0.3), ("student", "curriculum.keep_positions", True),
            (None, "train.keep_best", True))
BUDGET_KEYS = ("train.steps", "train.global_batch")


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


def with_protocol(tree: dict, side: str) -> dict:
    """``tree`` with the :data:`PROTOCOL` settings of ``side`` wherever it does not set the key itself."""
    for who, key, value in PROTOCOL:
        if who not in (None, side):
            continue
        section, name = key.split(".")
        if tree.get(section) is None:
            tree[section] = {}
        if isinstance(tree[section], dict):  # anything else is refused, naming the key, when the config is built
            tree[section].setdefault(name, value)
    return tree


def method_override(method: str, key: str, value) -> str:
    """``METHOD:key=value`` with the value written as YAML reads it back (JSON is YAML)."""
    return f"{method}:{key}={json.dumps(value)}"


def recipe_overrides(path: str | Path, methods: list[str] | None = None) -> list[str]:
    """``recipes.yaml`` (``{METHOD: {dotted key: value}}``, as written by ``lori tune``) as ``METHOD:key=value``
    overrides for ``lori compare --recipes``: those of ``methods`` (None: every method in the file), so that a
    comparison of some of the tuned methods takes one file."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--recipes {path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict) or not all(isinstance(v, dict) for v in tree.values()):
        raise ConfigError(f"--recipes {path}: expected METHOD: {{dotted key: value}} as lori tune writes it")
    out = [method_override(m, k, v) for m, settings in tree.items() for k, v in settings.items()
           if methods is None or m in methods]
    parse_overrides([o.partition(":")[2] for o in out])  # a value that does not parse is refused here
    return out


def merge(base: dict, extra: dict) -> dict:
    """A deep copy of ``base`` with the (nested) keys of ``extra`` set over it."""
    out = json.loads(json.dumps(base))
    for k, v in extra.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def split_overrides(overrides: list[str]) -> tuple[list[tuple[str, Any]], dict[str, list[tuple[str, Any]]],
                                                 dict[str, list[tuple[str, Any]]]]:
    """``key=value`` overrides -> (shared, {"teacher": [...], "student": [...]}, {METHOD: [...]}), prefixes removed.

    ``teacher.KEY`` / ``student.KEY`` target one side; ``METHOD:KEY`` (e.g. ``codi:curriculum.stages=0``) targets
    the one run of that method (``cot-sft:`` is the teacher) and is applied last; other keys apply to every run."""
    shared: list[tuple[str, Any]] = []
    per: dict[str, list[tuple[str, Any]]] = {side: [] for side in SIDES}
    per_method: dict[str, list[tuple[str, Any]]] = {}
    for key, value in parse_overrides(overrides):
        if ":" in key:
            method, _, rest = key.partition(":")
            if method not in METHODS:
                raise ConfigError(f"override {key}: {method!r} before ':' is not a method; choose from "
                                  f"{', '.join(METHODS)} (e.g. codi:curriculum.stages=0)")
            if not rest:
                raise ConfigError(f"override {key}: name a key after '{method}:', e.g. {method}:train.lr=3e-4")
            per_method.setdefault(method, []).append((rest, value))
            continue
        side, _, rest = key.partition(".")
        if side in per:
            if not rest:
                raise ConfigError(f"override {key}: name a key after '{side}.', e.g. {side}.train.steps=100")
            per[side].append((rest, value))
        else:
            shared.append((key, value))
    return shared, per, per_method


def pipeline_configs(teacher: dict, student: dict, overrides: list[str], out: Path, students: Iterable[str],
                     seed: int | None = None, where: str = "") -> dict[str, Config]:
    """The teacher config (``cot-sft``, in ``out/cot-sft``) and one student config per method of ``students`` (in
    ``out/METHOD``), keyed by method, teacher first.

    ``teacher`` and ``student`` are config trees (a parsed YAML preset); the overrides are applied to them, then
    the pipeline's own fields are set: ``method``, ``out_dir``, ``train.seed`` (when ``seed`` is given), a
    student's ``model.init_from`` (the teacher; a tiny student gets a tiny teacher's ``model.arch`` and sizes, the
    weights it starts from), the ``lori.teacher`` and ``lori.cache_dir`` (``out/lori-cache``) of a student whose method
    trains against a teacher cache (LoRi; null for the other students), and no curriculum for a student whose method
    renders every stage alike (No-CoT). A config error names ``where`` (e.g. the preset files) and the run.
    """
    shared, per, per_method = split_overrides(overrides)
    for side, preset in (("teacher", teacher), ("student", student)):  # a preset's own error names the preset
        try:
            config_from_dict(merge(preset, {}))
        except ConfigError as e:
            raise ConfigError(f"{where + ' ' if where else ''}({side} preset): {e}") from None
    out = Path(out)
    teacher_dir = str(out / TEACHER)
    trees = {TEACHER: merge(teacher, {})} | {m: merge(student, {}) for m in students if m != TEACHER}
    unused = sorted(set(per_method) - set(trees))
    if unused:
        raise ConfigError(f"{where + ': ' if where else ''}override {unused[0]}:...: no {unused[0]} run here; runs: "
                          f"{', '.join(trees)}")
    cfgs: dict[str, Config] = {}
    for name, tree in trees.items():
        is_teacher = name == TEACHER
        apply_overrides(tree, shared + per["teacher" if is_teacher else "student"] + per_method.get(name, []))
        if is_teacher and tree.get("method", TEACHER) != TEACHER:
            raise ConfigError(f"{where + ': ' if where else ''}the teacher must be an explicit-CoT run (method: "
                              f"{TEACHER}), got method: {tree['method']}")
        tree["method"] = name
        tree["out_dir"] = str(out / name)
        if seed is not None:
            apply_overrides(tree, [("train.seed", seed)])
        if not is_teacher:
            apply_overrides(tree, [("model.init_from", teacher_dir)])
            teacher_model = cfgs[TEACHER].model
            if teacher_model.name == "tiny" and (tree.get("model") or {}).get("name", "tiny") == "tiny":
                # the student starts from the teacher's weights, so it has its size
                apply_overrides(tree, [(f"model.{key}", getattr(teacher_model, key)) for key in TINY_ARCH_KEYS])
            method = METHODS.get(name)  # an unknown name is refused by config_from_dict below, naming the choices
            # only a student with a teacher cache (LoRi) reads them; others get none, not a preset's stale paths
            cache = method is not None and method.teacher_cache
            apply_overrides(tree, [("lori.teacher", teacher_dir if cache else None),
                                   ("lori.cache_dir", str(out / "lori-cache") if cache else None)])
            if method is not None and not method.curriculum:
                # it renders every stage alike (No-CoT); a preset's curriculum would only reset its optimizer
                apply_overrides(tree, [("curriculum.stages", 0)])
        try:
            cfgs[name] = config_from_dict(tree)
        except ConfigError as e:
            run = f"{name}{'' if seed is None else f', seed {seed}'}"
            cause = " (from the command line)" if overrides else ""  # the presets alone were valid (above)
            raise ConfigError(f"{where + ' ' if where else ''}({run}): {e}{cause}") from None
    return cfgs


def finished(cfg: Config) -> bool:
    """Whether ``cfg.out_dir`` holds the final checkpoint (step == train.steps) of a run with ``cfg``'s identity.

    A folder with checkpoints of other settings or inputs (lori.training.identity) is refused, naming the keys."""
    out = Path(cfg.out_dir)
    found = list_checkpoints(out)
    if not found:
        return False
    check_reuse(cfg, out, f"use a new output folder, or delete {out} to train this run again")
    return found[-1].name == f"step-{cfg.train.steps:06d}"


def train_runs(cfgs: dict[str, Config], tag: str, timings: dict[str, float] | None = None,
               label: str = "") -> None:
    """Train every config in order (the teacher first); a student with a teacher cache (LoRi) gets its teacher
    statistics first. Finished
    runs are reused; an interrupted one resumes from its newest checkpoint (``train.resume: auto``); a run folder
    whose settings or inputs differ from its config (a changed key, a retrained teacher) is refused."""
    timings = {} if timings is None else timings

    def stage(name: str, fn) -> None:
        t0 = time.perf_counter()
        print(f"\n[{tag}] === {label}{name} ===", flush=True)
        fn()
        timings[f"{label}{name}"] = time.perf_counter() - t0

    for name, cfg in cfgs.items():
        if finished(cfg):
            print(f"[{tag}] {label}{name}: reusing the finished run in {cfg.out_dir}")
            continue
        if METHODS[cfg.method].teacher_cache:
            stage("precompute teacher statistics", lambda cfg=cfg: precompute(cfg))
        stage(f"train {name}", lambda cfg=cfg: train(cfg))


def _eval_key(ckpt: Path, cfg: Config) -> dict:
    """What an evaluation depends on: the checkpoint's files (name, size, mtime), the data and eval settings."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt.iterdir() if p.is_file())
    return {"checkpoint": str(ckpt), "files": [list(f) for f in files], "method": cfg.method,
            "data": to_dict(cfg.data), "eval": to_dict(cfg.eval)}


def best_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint with the best validation accuracy within the final curriculum stage (``OUT/checkpoints/best``)
    when the run kept one (``train.keep_best``); None otherwise (a run that never validated in its final stage has
    none): then a comparison scores the newest checkpoint."""
    kept = cfg.train.keep_best and read_best(cfg.out_dir) is not None
    return checkpoint_dir(Path(cfg.out_dir)) / BEST_DIR if kept else None


def run_facts(cfg: Config) -> dict:
    """What the newest checkpoint of ``cfg.out_dir`` records about its run, for a results row's ``extra``: the budget
    (``train.steps`` x ``train.global_batch``), the training wall seconds, the curriculum stage the last step trained
    in, whether that is the final stage (``final_stage_reached``; false: the run is unfinished) and how many steps
    trained there; None where the checkpoint did not record it (an older lori, a weights-only folder)."""
    ckpt = resolve_checkpoint(cfg.out_dir)
    state = load_state(ckpt) if (ckpt / STATE_FILE).is_file() else {}
    clock = state.get("curriculum") or {}
    trained = clock.get("trained")
    return {"budget": {"steps": cfg.train.steps, "global_batch": cfg.train.global_batch,
                       "examples": cfg.train.steps * cfg.train.global_batch},
            "wall_s": state.get("wall_s"), "stages": cfg.curriculum.stages, "stage": trained,
            "final_stage_reached": None if trained is None else cfg.curriculum.is_final(trained),
            "final_stage_steps": clock.get("final_steps")}


def train_accuracy(cfg: Config, ckpt: Path) -> tuple[float, int]:
    """``(accuracy, n)`` of ``ckpt`` on the first ``train.eval_size`` training problems (greedy, the run's eval
    settings), the training-side number beside a test accuracy; kept in ``OUT/eval-train/`` and reused while the
    checkpoint's files and the data and eval settings are the same."""
    folder = Path(cfg.out_dir) / "eval-train"
    key_file = folder / "eval_key.json"
    key = {**_eval_key(ckpt, cfg), "n": cfg.train.eval_size}
    if key_file.is_file():
        saved = json.loads(key_file.read_text())
        if saved.get("key") == key:
            return saved["accuracy"], saved["n"]
    student = load_student(ckpt, cfg)
    examples = load_split(cfg.data, "train")[: cfg.train.eval_size]
    ev = evaluate(student.lm, student.tokenizer, [student.prompt_ids(ex) for ex in examples], examples,
                  student.task, method=cfg.method, checkpoint=str(ckpt), batch_size=cfg.eval.batch_size,
                  max_new_tokens=cfg.eval.max_new_tokens, latency_problems=0, progress=False,
                  **student.generation_kwargs())
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"key": key, "accuracy": ev.row.accuracy, "n": len(examples)}) + "\n")
    return ev.row.accuracy, len(examples)


def evaluate_run(cfg: Config, seed: int | None = None, tag: str = "lori", label: str = "",
                 reuse: bool = True, checkpoint: Path | None = None) -> tuple[ResultRow, int, Path]:
    """Evaluate ``checkpoint`` (default: the newest checkpoint of ``cfg.out_dir``) on ``cfg.eval.split`` -> ``(row,
    n, predictions)``.

    Writes ``OUT_DIR/eval-SPLIT/`` as ``lori eval`` does (``results.json``, ``results.md``,
    ``predictions-METHOD-STEP.jsonl``) plus ``eval_key.json``; with ``reuse``, an evaluation whose key matches (same
    checkpoint files, data and eval settings) and whose row records these weights and settings is read back instead
    of being run again. ``seed`` goes into the row.
    """
    ckpt = resolve_checkpoint(checkpoint or cfg.out_dir)
    folder = Path(cfg.out_dir) / f"eval-{cfg.eval.split}"
    predictions = folder / f"predictions-{cfg.method}-{ckpt.name}.jsonl"
    key_file = folder / "eval_key.json"
    key = _eval_key(ckpt, cfg)
    if reuse and key_file.is_file() and predictions.is_file():
        try:
            same = json.loads(key_file.read_text()) == key
        except json.JSONDecodeError:
            same = False
        if same:
            _, _, n, rows = read_results(folder)
            # and the row describes these weights under the run's own settings (not an older lori's row)
            if len(rows) == 1 and row_mismatch(rows[0], weights_digest(ckpt), inference_settings(cfg)) is None:
                print(f"[{tag}] {label}{cfg.method}: reusing its evaluation in {folder}")
                return replace(rows[0], seed=seed), n, predictions
    key_file.unlink(missing_ok=True)  # written last: a folder without it holds no finished evaluation
    for old in folder.glob("predictions-*.jsonl"):  # one evaluation per folder: an earlier checkpoint's goes
        old.unlink()
    ev = evaluate_checkpoint(ckpt, cfg)
    row = replace(ev.row, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    with predictions.open("w") as f:
        for p in ev.predictions:
            f.write(json.dumps(p) + "\n")
    write_results(folder, cfg.data.task, cfg.eval.split, len(ev.predictions), [row])
    key_file.write_text(json.dumps(key, indent=1) + "\n")
    return row, len(ev.predictions), predictions


def evaluate_current(cfg: Config, seed: int | None = None, tag: str = "lori", label: str = "",
                     checkpoint: Path | None = None):
    """:func:`lori.pipeline.evaluate_run`, reusing a finished evaluation only when its row records the test set
    ``cfg`` evaluates now; one of another test set (a data file changed since) or without that record (written by an
    older lori) is run again. Returns ``(row, n, predictions)``."""
    row, n, predictions = evaluate_run(cfg, seed=seed, tag=tag, label=label, checkpoint=checkpoint)
    current = test_set_identity(cfg)
    if row.test_set is None:
        why = "has no record of its test set"
    else:
        diff = test_set_difference(row.test_set, current)
        why = None if diff is None else f"was of another test set than the current one ({diff})"
    if why is None:
        return row, n, predictions
    print(f"[{tag}] {label}{cfg.method}: its evaluation {why}; evaluating again")
    return evaluate_run(cfg, seed=seed, tag=tag, label=label, reuse=False, checkpoint=checkpoint)
