"""Training curves of runs side by side: the cross-entropy of each answer token (``ce_ans1..`` in metrics.jsonl, one
panel per run; ``lori.evaluation.plots.plot_answer_token_ce``) and the validation accuracy against the step, with
the curriculum stage on a second axis.

    python runs/answer_ce_plot.py out/mult4x4-icot-si out/mult4x4-lori-sched --out docs/figures/x.png
    python runs/answer_ce_plot.py icot=out/a lori=out/b --out x.png        # label = folder name unless given
    python runs/answer_ce_plot.py out/a "phase 2=out/a-p2@36000" --out x.png  # a run that continues another's
                                                                            #   weights: its steps after 36,000

Writes OUT (answer tokens) and OUT with ``-valid`` before the suffix (validation accuracy and stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lori.evaluation.plots import plot_answer_token_ce


def parse_run(arg: str) -> tuple[str, Path, int]:
    """``[LABEL=]FOLDER[@STEPS]`` -> (label, folder, the steps before the run's first: a run that continues the
    weights of another is drawn after it)."""
    label, _, folder = arg.rpartition("=") if "=" in arg else ("", "", arg)
    folder, _, after = folder.partition("@")
    return label or Path(folder).name, Path(folder), int(after or 0)


def validation_points(records: list[dict], offset: int = 0) -> tuple[list, list]:
    """(step, validation exact match %) and (step, curriculum stage) of a run's metrics, steps shifted by
    ``offset``."""
    valid = [(offset + r["step"], 100 * r["valid_accuracy"]) for r in records if "valid_accuracy" in r]
    stages = [(offset + r["step"], r["stage"]) for r in records if "stage" in r]
    return valid, stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (holding metrics.jsonl), optionally LABEL=FOLDER, "
                    "optionally @STEPS (the validation curve starts after STEPS)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    runs, offsets = {}, {}
    for arg in args.runs:
        label, folder, after = parse_run(arg)
        if not (folder / "metrics.jsonl").is_file():
            raise SystemExit(f"{folder}: no metrics.jsonl (not a run folder)")
        runs[label] = folder / "metrics.jsonl"
        offsets[label] = after
    first = plot_answer_token_ce({k: [v] for k, v in runs.items()}, args.out,
                                 title="training cross-entropy of each answer token (d1 = least significant)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {label: [json.loads(line) for line in path.read_text().splitlines()] for label, path in runs.items()}
    staged = any("stage" in r for rs in records.values() for r in rs)
    fig, axes = plt.subplots(2 if staged else 1, 1, figsize=(7, 5.2 if staged else 3.8), dpi=110, sharex=True,
                             squeeze=False, **({"height_ratios": [2, 1]} if staged else {}))
    acc, stage = axes[0][0], (axes[1][0] if staged else None)
    for label, rs in records.items():
        valid, stages = validation_points(rs, offsets[label])
        line, = acc.plot(*zip(*valid), marker="o", ms=3, label=label) if valid else (None,)
        if stages:
            stage.plot(*zip(*stages), color=line.get_color() if line else None, label=label)
    acc.set_ylabel("validation exact match (%)")
    acc.set_ylim(-2, 102)
    acc.grid(alpha=0.3)
    acc.legend(fontsize=8)
    if stage is not None:
        stage.set_ylabel("curriculum stage")
        stage.grid(alpha=0.3)
    (stage or acc).set_xlabel("optimizer step")
    fig.tight_layout()
    second = args.out.with_name(f"{args.out.stem}-valid{args.out.suffix}")
    fig.savefig(second)
    plt.close(fig)
    print(f"wrote {first or '(no per-answer-token values logged)'} and {second}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
