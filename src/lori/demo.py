"""``lori demo``: the whole LoRi pipeline on a built-in multiplication task, on the CPU, in a few minutes.

Stages: train the explicit-CoT teacher (CoT-SFT) from scratch -> precompute the teacher statistics -> train a No-CoT
and a LoRi student from the teacher's weights with the same budget -> evaluate all three on held-out problems ->
print a table and write ``results.json``, ``results.md``, ``report.md`` and a plot to ``--out DIR``. Every number is
measured in the run; a finished training (and its evaluation) is reused when the demo is run again on the same
folder. The pipeline itself (configs, training order, evaluation) lives in :mod:`lori.pipeline`, shared with
``lori compare``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import Config, dump_config
from .evaluation.report import ResultRow, markdown_table, write_results
from .pipeline import evaluate_run, merge, pipeline_configs, train_runs

# The built-in task and budgets (2 CPU cores: ~16k tokens/s for this model). Any key can be overridden from the
# command line, e.g. `lori demo --out out/demo train.steps=300`; `teacher.`/`student.` prefixes target one side.
BASE = {
    "data": {"task": "multiplication", "format": "icot", "digits": [3, 3], "train_size": 60_000,
             "valid_size": 200, "test_size": 500, "seed": 0},
    "model": {"name": "tiny", "arch": "llama", "hidden_size": 128, "num_layers": 4, "num_heads": 4,
              "intermediate_size": 512},
    "train": {"global_batch": 64, "micro_batch": 64, "lr": 1.0e-3, "schedule": "cosine", "log_every": 50,
              "eval_every": 0, "eval_size": 100, "save_every": 100_000},
    "eval": {"split": "test", "batch_size": 250, "max_new_tokens": 64, "latency_problems": 16},
}
# A constant learning rate and fresh problems: the teacher's accuracy jumps late (from a few % to ~100% within a few
# hundred steps, at about one epoch of 4x4 problems); a cosine decay over a short run can stop it before the jump
# (1,200 cosine steps on 20,000 problems: 47% on the demo's test set; 1,600 constant steps on 20,000: 40.6%).
TEACHER = {"method": "cot-sft", "train": {"steps": 1_800, "schedule": "constant"}}
STUDENT = {"train": {"steps": 600, "lr": 5.0e-4, "schedule": "constant"},
           "lori": {"latent_steps": 6, "rank": 16, "calib_size": 1_000},
           "curriculum": {"stages": 2, "steps_per_stage": 150, "thoughts_per_step": 2}}


def demo_configs(out: Path, overrides: list[str]) -> dict[str, Config]:
    """The teacher, No-CoT and LoRi configs of the demo, with command-line overrides applied."""
    return pipeline_configs(merge(BASE, TEACHER), merge(BASE, STUDENT), overrides, out, ("no-cot", "lori"))


def run_demo(out: Path, overrides: list[str]) -> Path:
    from .evaluation.plots import plot_accuracy_vs_tokens
    from .subspace.cache import read_manifest

    out.mkdir(parents=True, exist_ok=True)
    cfgs = demo_configs(out, overrides)
    timings: dict[str, float] = {}
    train_runs(cfgs, "lori demo", timings)

    rows: list[ResultRow] = []
    n = 0
    for name, cfg in cfgs.items():
        t0 = time.perf_counter()
        row, n, predictions = evaluate_run(cfg, tag="lori demo")
        timings[f"eval {name}"] = time.perf_counter() - t0
        rows.append(row)
        shutil.copyfile(predictions, out / f"predictions-{name}.jsonl")
    teacher_cfg = cfgs["cot-sft"]
    split = teacher_cfg.eval.split
    write_results(out, teacher_cfg.data.task, split, n, rows)
    plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png",
                            title=f"{teacher_cfg.data.digits[0]}x{teacher_cfg.data.digits[1]} multiplication, {split}")
    manifest = read_manifest(Path(cfgs["lori"].lori.cache_dir))
    table = markdown_table(rows)
    digits = "x".join(map(str, teacher_cfg.data.digits))
    lines = [
        f"# lori demo: {digits} multiplication, {n} held-out {split} problems",
        "",
        table,
        "",
        "Accuracy: exact match of the digits after `####` (one policy for every method), with a 95% Wilson interval. "
        "Tokens: decoding steps after the prompt (latent steps + `<eot>` + answer tokens incl. EOS). Latency: batch 1; "
        "throughput: batched.",
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
