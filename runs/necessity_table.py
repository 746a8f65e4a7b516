"""The latent-necessity checks of `lori analyze TEACHER --student RUN` (RUN/analysis-valid/analysis.json), one line
per run: accuracy with the student's own thoughts, zeroed, replaced by noise of the same norm, shuffled across
problems, swapped between pairs (and the share of swapped answers that are the partner's gold answer), the per-step
intervention (thought k set to another problem's: the least share of moved answers that follow the new value over
the steps) and the step-value probe (the least share of problems whose state decodes to step k's value).

    python runs/necessity_table.py out/is-it-lori/*-seed0 [--split valid]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def line(run: Path, analysis: dict) -> str:
    s = analysis["student_analysis"]
    n = s["necessity"]
    steps = n["per_step"]
    follows = min(p["follows_implied"] for p in steps if p.get("implied")) if any(p.get("implied") for p in steps) \
        else float("nan")
    probe = min(v["share"] for v in s["step_values"]) if s.get("step_values") else float("nan")
    return (f"| {run.name} | {n['n']} | {pct(n['clean']['accuracy'])} | {pct(n['zeroed']['accuracy'])} | "
            f"{pct(n['noise']['accuracy'])} | {pct(n['shuffled']['accuracy'])} | {pct(n['swapped']['accuracy'])} "
            f"({pct(n['swapped']['follows_partner'])}) | {pct(min(p['changed'] for p in steps))} | {pct(follows)} | "
            f"{pct(probe)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="student run folders analysed by `lori analyze ... --student RUN`")
    ap.add_argument("--split", default="valid")
    args = ap.parse_args()
    print("| student | problems | own % | zeroed % | noise % | shuffled % | swapped % (partner's answer %) | "
          "per step: answer changed, least % | per step: follows the new value, least % | step value decoded, "
          "least % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    missing = []
    for run in map(Path, args.runs):
        f = run / f"analysis-{args.split}" / "analysis.json"
        if f.is_file():
            print(line(run, json.loads(f.read_text())))
        else:
            missing.append(run.name)
    if missing:
        print(f"\n(not analysed: {', '.join(missing)})")


if __name__ == "__main__":
    main()
