"""Training curves of runs side by side: the cross-entropy of each answer token (``ce_ans1..`` in metrics.jsonl, one
panel per run; ``lori.evaluation.plots.plot_answer_token_ce``) and the validation accuracy against the step, with
the curriculum stage on a second axis.

    python runs/answer_ce_plot.py out/mult4x4-icot-si out/mult4x4-lori-sched --out docs/figures/x.png
    python runs/answer_ce_plot.py icot=out/a lori=out/b --out x.png        # label = folder name unless given

Writes OUT (answer tokens) and OUT with ``-valid`` before the suffix (validation accuracy and stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lori.evaluation.plots import plot_answer_token_ce


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (holding metrics.jsonl), optionally LABEL=FOLDER")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    runs = {}
    for arg in args.runs:
        label, _, folder = arg.rpartition("=") if "=" in arg else ("", "", arg)
        folder = Path(folder)
        if not (folder / "metrics.jsonl").is_file():
            raise SystemExit(f"{folder}: no metrics.jsonl (not a run folder)")
        runs[label or folder.name] = folder / "metrics.jsonl"
    first = plot_answer_token_ce({k: [v] for k, v in runs.items()}, args.out,
                                 title="training cross-entropy of each answer token (d1 = least significant)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, stage) = plt.subplots(2, 1, figsize=(7, 5.2), dpi=110, sharex=True, height_ratios=[2, 1])
    for label, path in runs.items():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        valid = [(r["step"], 100 * r["valid_accuracy"]) for r in records if "valid_accuracy" in r]
        stages = [(r["step"], r["stage"]) for r in records if "stage" in r]
        line, = acc.plot(*zip(*valid), marker="o", ms=3, label=label) if valid else (None,)
        if stages:
            stage.plot(*zip(*stages), color=line.get_color() if line else None, label=label)
    acc.set_ylabel("validation exact match (%)")
    acc.set_ylim(-2, 102)
    acc.grid(alpha=0.3)
    acc.legend(fontsize=8)
    stage.set_ylabel("curriculum stage")
    stage.set_xlabel("optimizer step")
    stage.grid(alpha=0.3)
    fig.tight_layout()
    second = args.out.with_name(f"{args.out.stem}-valid{args.out.suffix}")
    fig.savefig(second)
    plt.close(fig)
    print(f"wrote {first or '(no per-answer-token values logged)'} and {second}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
