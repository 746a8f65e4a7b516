"""Rows over training seeds: runs named ROW-seedN, each evaluated by `lori eval RUN` (RUN/eval-SPLIT/results.json),
grouped by ROW into mean ± the 95% Student-t half-width over seeds, with each seed's accuracy, whether every run
reached its final curriculum stage, the share of problems given the most common answer (a constant predictor
gives most problems one answer), mean generated tokens and latency.

    python runs/seed_table.py out/is-it-lori/*-seed* [--split test]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

from lori.evaluation.digits import read_predictions
from lori.evaluation.results import aggregate_rows, read_results
from lori.evaluation.sanity import answer_shares
from lori.models.checkpoint_folders import checkpoint_config
from lori.pipeline import run_facts
from lori.tasks import TASKS


def seed_row(run: Path, split: str):
    """The run's results row with its run facts (lori.pipeline.run_facts) and answer shares in ``extra``."""
    folder = run / f"eval-{split}"
    _, _, _, rows = read_results(folder / "results.json")
    (row,) = rows
    # the row names its checkpoint as `lori eval` was given it (relative to where it ran): find it in the run
    cfg = replace(checkpoint_config(run / "checkpoints" / Path(row.checkpoint).name, []), out_dir=str(run))  # moved?
    top, gold_top = answer_shares([p for f in folder.glob("predictions-*.jsonl") for p in read_predictions(f)],
                                  TASKS[cfg.data.task])
    return replace(row, extra={**row.extra, **run_facts(cfg), "top_answer_share": top, "gold_top_share": gold_top})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders named ROW-seedN")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs if (Path(r) / f"eval-{args.split}" / "results.json").is_file()]
    skipped = sorted(set(args.runs) - {str(r) for r in runs})
    rows = [seed_row(r, args.split) for r in runs]
    name = {id(row): re.sub(r"-seed\d+$", "", run.name) for row, run in zip(rows, runs)}
    print("| row | seeds | exact % (mean ± t half-width) | per seed | final stage | top answer % | tokens | latency ms |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for agg in aggregate_rows(rows, key=lambda r: name[id(r)]):
        group = [r for r in rows if name[id(r)] == agg.method]
        acc = 100 * agg.accuracy
        half = "" if len(group) == 1 else f" ± {100 * (agg.ci95[1] - agg.ci95[0]) / 2:.1f}"
        one = f" [{100 * group[0].ci95[0]:.1f}, {100 * group[0].ci95[1]:.1f}] (Wilson)" if len(group) == 1 else ""
        seeds = " / ".join(f"{100 * r.accuracy:.1f}" for r in group)
        reached = [r.extra.get("final_stage_reached") for r in group]
        if not group[0].extra.get("stages"):
            stage = "no curriculum"
        elif False in reached:
            stage = (f"NO in {reached.count(False)} ({', '.join(str(r.extra['stage']) for r in group)} of "
                     f"{group[0].extra['stages'] + 1})")
        else:  # None: the checkpoint did not record its curriculum clock
            stage = "n/a" if None in reached and True not in reached else "yes" + (
                f" (n/a in {reached.count(None)})" if None in reached else "")
        top = max(r.extra["top_answer_share"] for r in group)
        print(f"| {agg.method} | {len(group)} | {acc:.1f}{half}{one} | {seeds} | {stage} | {100 * top:.1f} | "
              f"{agg.mean_generated_tokens:.1f} | {agg.latency_ms_per_problem:.1f} |")
    if skipped:
        print(f"\n(not evaluated yet: {', '.join(skipped)})")


if __name__ == "__main__":
    main()
