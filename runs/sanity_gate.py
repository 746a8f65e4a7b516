"""Stop a sweep whose budget cannot teach what it must: the mean accuracy of METHOD's rows in a `lori compare`
results.json (over its seeds) must reach --min, and every row's teacher its validation --teacher-min; otherwise one
line says what fell short and the exit status is 1.

    python runs/sanity_gate.py out/depth/L-1/results.json --method no-cot --min 0.95
"""

from __future__ import annotations

import argparse
import sys

from lori.evaluation.results import read_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json of a lori compare")
    ap.add_argument("--method", required=True)
    ap.add_argument("--min", type=float, required=True, help="the least mean accuracy (a fraction)")
    ap.add_argument("--teacher-min", type=float, default=0.99, help="the least teacher validation accuracy")
    args = ap.parse_args()
    _, _, _, rows = read_results(args.results)
    mine = [r for r in rows if r.method == args.method]
    if not mine:
        sys.exit(f"{args.results}: no {args.method} row")
    mean = sum(r.accuracy for r in mine) / len(mine)
    weak = sorted({f"{r.extra['teacher_valid_accuracy']:.3f} (seed {r.seed})" for r in rows
                   if r.extra.get("teacher_valid_accuracy") is not None
                   and r.extra["teacher_valid_accuracy"] < args.teacher_min})
    problems = []
    if mean < args.min:
        problems.append(f"{args.method} reaches {100 * mean:.1f}% (mean of {len(mine)} seeds), below "
                        f"{100 * args.min:.0f}%: raise the budget (student.train.steps) until it does")
    if weak:
        problems.append(f"teachers below {100 * args.teacher_min:.0f}% on validation: {', '.join(weak)}: train them "
                        "longer (teacher.train.steps)")
    if problems:
        sys.exit(f"{args.results}: " + "; ".join(problems))
    print(f"{args.results}: {args.method} {100 * mean:.1f}% >= {100 * args.min:.0f}%, teachers >= "
          f"{100 * args.teacher_min:.0f}%")


if __name__ == "__main__":
    main()
