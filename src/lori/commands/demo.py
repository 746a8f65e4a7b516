"""``lori demo``: the whole LoRi pipeline on the built-in reasoning-depth task, on the CPU, in about ten minutes.

The task is 6-step arithmetic over named variables mod 10 (:mod:`lori.data.chains`), where every step carries one
small value: the place where latent steps can do the serial work. Stages: the explicit-CoT teacher (CoT-SFT) -- by
default the small checkpoint shipped in ``lori/assets/chains-teacher`` (made by ``lori train
configs/chains-cot-sft.yaml``), evaluated in the run; ``--train-teacher`` trains it from scratch instead (about 5
minutes more) -> precompute the teacher statistics -> train a No-CoT and a LoRi student from the teacher's weights
with the same budget -> evaluate all three on 500 held-out problems -> print a table and write ``results.json``,
``results.md``, ``report.md`` and a plot to ``--out DIR``. Every number is measured in the run; a finished training
(and its evaluation) is reused when the demo is run again on the same folder with the same settings. The pipeline
itself (configs, training order, evaluation) lives in :mod:`lori.pipeline`, shared with ``lori compare``.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

from ..config import Config, apply_overrides, dump_config, load_config, load_tree, parse_overrides, save_config
from ..evaluation.plots import plot_accuracy_vs_tokens
from ..evaluation.results import ResultRow, markdown_table, write_results
from ..models.checkpoint_folders import list_checkpoints, step_dir
from ..pipeline import TEACHER, evaluate_current, pipeline_configs, train_runs
from ..methods.lori.cache import read_manifest
from ..training.identity import describe, differences, run_identity, write_identity
from ..utils import check_writable

SINGLE_PROCESS = True
POSITIONAL = "overrides"


def add_arguments(d) -> None:
    d.add_argument("--out", default="out/demo")
    d.add_argument("--train-teacher", action="store_true",
                   help="train the CoT-SFT teacher from scratch instead of using the shipped checkpoint (~5 min)")
    d.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage")


def run(args) -> None:
    run_demo(Path(args.out), args.overrides, train_teacher=args.train_teacher)


TEACHER_ASSET = "chains-teacher"  # lori/assets/: the weights and tokenizer of configs/chains-cot-sft.yaml's run

# The demo: the shipped presets (lori/presets/, linked as configs/chains-*.yaml) plus these demo-only settings (it
# evaluates once, at the end); command-line overrides (`teacher.`/`student.` prefixes for one side) come after them.
PRESETS = {"teacher": "chains-cot-sft.yaml", "student": "chains-lori.yaml"}
DEMO_OVERRIDES = ["train.eval_every=0", "train.save_every=100000"]


def preset_tree(name: str) -> dict:
    """The raw tree of a shipped preset (its relative paths resolved against the package's presets folder; the
    pipeline sets every run's own paths)."""
    with resources.as_file(resources.files("lori") / "presets" / name) as path:
        return load_tree(path)


def demo_configs(out: Path, overrides: list[str]) -> dict[str, Config]:
    """The teacher, No-CoT and LoRi configs of the demo: the presets, the demo-only settings, then ``overrides``."""
    trees = {side: apply_overrides(preset_tree(name), parse_overrides(DEMO_OVERRIDES))
             for side, name in PRESETS.items()}
    return pipeline_configs(trees["teacher"], trees["student"], overrides, out, ("no-cot", "lori"))


def install_teacher(cfg: Config) -> str | None:
    """Put the shipped teacher checkpoint in ``cfg.out_dir`` as the finished run of ``cfg``, when ``cfg`` is the
    config the checkpoint was trained with (up to logging and evaluation settings). Returns None when installed (or
    already there), else why not: then the teacher is trained."""
    out = Path(cfg.out_dir)
    if list_checkpoints(out):
        return None  # an earlier demo's teacher: reused or refused by the pipeline
    with resources.as_file(resources.files("lori") / "assets" / TEACHER_ASSET) as src:
        shipped = load_config(src / "lori_config.yaml")
        mine, theirs = run_identity(cfg), run_identity(shipped)
        refused, _ = differences(theirs, mine)
        refused += ["train.steps"] if cfg.train.steps != shipped.train.steps else []
        if refused:
            return f"the shipped teacher was trained with other settings ({describe(refused, theirs, mine)})"
        ckpt = step_dir(out, cfg.train.steps)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(ckpt.name + ".installing")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
    save_config(cfg, tmp / "lori_config.yaml")
    tmp.rename(ckpt)
    save_config(cfg, out / "config.yaml")
    write_identity(out, mine)
    print(f"[lori demo] teacher: the shipped checkpoint of configs/chains-cot-sft.yaml (lori/assets/{TEACHER_ASSET}) "
          f"in {ckpt}; it is evaluated below. --train-teacher trains it from scratch instead")
    return None


def run_demo(out: Path, overrides: list[str], train_teacher: bool = False) -> Path:
    cfgs = demo_configs(out, overrides)
    check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if not train_teacher:
        why_not = install_teacher(cfgs[TEACHER])
        if why_not:
            print(f"[lori demo] training the teacher: {why_not}")
    train_runs(cfgs, "lori demo", timings)

    rows: list[ResultRow] = []
    n = 0
    for name, cfg in cfgs.items():
        t0 = time.perf_counter()
        row, n, predictions = evaluate_current(cfg, tag="lori demo")  # only an evaluation of today's test set
        timings[f"eval {name}"] = time.perf_counter() - t0
        rows.append(row)
        shutil.copyfile(predictions, out / f"predictions-{name}.jsonl")
    teacher_cfg = cfgs[TEACHER]
    split, d = teacher_cfg.eval.split, teacher_cfg.data
    title = (f"{d.chain_steps}-step chains mod {d.chain_modulus}" if d.task == "chains" else
             f"{d.digits[0]}x{d.digits[1]} multiplication")
    write_results(out, d.task, split, n, rows)
    plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png", title=f"{title}, {split}")
    manifest = read_manifest(Path(cfgs["lori"].lori.cache_dir))
    table = markdown_table(rows)
    chance = f" Chance is 1/{d.chain_modulus} = {100 / d.chain_modulus:.0f}%." if d.task == "chains" else ""
    lines = [
        f"# lori demo: {title}, {n} held-out {split} problems",
        "",
        table,
        "",
        "Accuracy: exact match of the answer after `####` (one policy for every method), with a 95% Wilson interval."
        f"{chance} Tokens: decoding steps after the prompt (latent steps + `<eot>` + answer tokens incl. EOS). "
        "Latency: batch 1; throughput: batched.",
        "",
        f"Subspace: rank {manifest['basis']['rank']}, energy captured per layer "
        f"{', '.join(f'{e:.3f}' for e in manifest['basis']['energy_captured'])}; teacher-statistics cache "
        f"{manifest['cache_bytes'] / 2**20:.2f} MiB vs {manifest['raw_trajectory_bytes'] / 2**20:.1f} MiB of raw "
        "trajectories.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()],
        "",
        "![accuracy vs generated tokens](accuracy_vs_tokens.png)",
        "",
        "## Configs",
        *[f"\n### {name}\n\n```yaml\n{dump_config(cfg)}```" for name, cfg in cfgs.items()],
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n" + table)
    print(f"\n[lori demo] stage times: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}")
    print(f"[lori demo] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'report.md'}")
    return out
