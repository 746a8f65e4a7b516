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

from .compare import evaluate_current
from .config import Config, dump_config, load_config, save_config
from .evaluation.plots import plot_accuracy_vs_tokens
from .evaluation.report import ResultRow, markdown_table, write_results
from .models.checkpoint import list_checkpoints, step_dir
from .pipeline import TEACHER, evaluate_run, merge, pipeline_configs, train_runs
from .subspace.cache import read_manifest
from .training.identity import describe, differences, run_identity, write_identity
from .utils import check_writable

TEACHER_ASSET = "chains-teacher"  # lori/assets/: the weights and tokenizer of configs/chains-cot-sft.yaml's run

# The built-in task and budgets (2 CPU cores). Any key can be overridden from the command line, e.g.
# `lori demo --out out/demo train.steps=300`; `teacher.`/`student.` prefixes target one side.
BASE = {
    "data": {"task": "chains", "format": "icot", "chain_steps": 6, "chain_modulus": 10, "chain_ops": "+-*",
             "chain_back_ref": 0.0, "chain_rationale": "value", "train_size": 20_000, "valid_size": 200,
             "test_size": 500, "seed": 0},
    "model": {"name": "tiny", "arch": "llama", "hidden_size": 128, "num_layers": 4, "num_heads": 4,
              "intermediate_size": 512},
    "train": {"global_batch": 64, "micro_batch": 64, "lr": 1.0e-3, "schedule": "constant", "log_every": 50,
              "eval_every": 0, "eval_size": 200, "save_every": 100_000},
    "eval": {"split": "test", "batch_size": 250, "max_new_tokens": 48, "latency_problems": 16},
}
# The teacher jumps from ~30% to 100% on validation between steps 700 and 800 (constant lr, fresh problems); 1,000
# steps on 60,000 problems leave a margin. The shipped checkpoint is this run's step 1000.
TEACHER_CFG = {"method": "cot-sft", "data": {"train_size": 60_000}, "train": {"steps": 1_000}}
# Students: the curriculum of Coconut (stage k: the first k steps are k thoughts), each stage ending once its
# training CE is below 0.02 (at most 300 steps), thoughts where the teacher wrote each step's result (offset 2,
# stride 5 for `<< b = 7 >>`, so the language after them keeps the teacher's positions), the identity projector
# (the thought is the last hidden state, as in Coconut), and LoRi's step anchors (the state that feeds step k's
# thought is pulled towards the teacher's state where it writes step k's result), on top of L_rat and L_anc.
# Cosine decay and clipping at 1.0: with a constant lr and no clipping the all-latent stage's loss swung between 0.1
# and 0.6 and validation reached 70% at step 1,500; with them every stage was learned by step ~500 and validation was
# 100% (200 problems) at steps 500 and 750 (of 1,500).
STUDENT = {"train": {"steps": 700, "schedule": "cosine", "grad_clip": 1.0},
           "lori": {"latent_steps": 6, "rank": 16, "calib_size": 1_000, "projector": "identity",
                    "step_anchors": True},
           "curriculum": {"stages": 6, "steps_per_stage": 300, "advance_below": 0.02, "thought_offset": 2,
                          "thought_stride": 5}}
def demo_configs(out: Path, overrides: list[str]) -> dict[str, Config]:
    """The teacher, No-CoT and LoRi configs of the demo, with command-line overrides applied."""
    return pipeline_configs(merge(BASE, TEACHER_CFG), merge(BASE, STUDENT), overrides, out, ("no-cot", "lori"))


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
