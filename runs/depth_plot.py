"""Accuracy against reasoning depth: one line per method (mean over seeds, 95% Student-t interval; a single seed
shows its Wilson interval), from the results.json of one `lori compare` per depth (runs/depth_sweep.sh).

    python runs/depth_plot.py out/depth/L-2 out/depth/L-4 ... [--out out/depth]

Writes OUT/accuracy_vs_depth.png and OUT/depth.md (the table behind the plot)."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def summarise(rows: list[dict]) -> tuple[float, float, float, float]:
    """(mean accuracy %, low %, high %, mean generated tokens) over the seeds of one method."""
    accs = [100 * r["accuracy"] for r in rows]
    tokens = statistics.mean(r["mean_generated_tokens"] for r in rows)
    if len(accs) == 1:
        lo, hi = (100 * x for x in rows[0]["ci95"])
        return accs[0], lo, hi, tokens
    m, sd = statistics.mean(accs), statistics.stdev(accs)
    half = T95.get(len(accs) - 1, 1.96) * sd / math.sqrt(len(accs))
    return m, max(0.0, m - half), min(100.0, m + half), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="compare folders named L-<depth>")
    ap.add_argument("--out", help="where the plot and table go (default: the runs' parent)")
    args = ap.parse_args()
    table: dict[str, dict[int, tuple]] = {}
    for run in map(Path, args.runs):
        m = re.search(r"L-(\d+)$", run.name)
        if not m or not (run / "results.json").is_file():
            print(f"skipping {run}: not a finished compare folder named L-<depth>")
            continue
        depth = int(m.group(1))
        rows = json.loads((run / "results.json").read_text())["results"]
        for method in dict.fromkeys(r["method"] for r in rows):
            table.setdefault(method, {})[depth] = summarise([r for r in rows if r["method"] == method])
    if not table:
        raise SystemExit("no finished compare folders given")
    out = Path(args.out) if args.out else Path(args.runs[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, by_depth in table.items():
        ds = sorted(by_depth)
        ys = [by_depth[d][0] for d in ds]
        ax.plot(ds, ys, "o-", label=method)
        ax.fill_between(ds, [by_depth[d][1] for d in ds], [by_depth[d][2] for d in ds], alpha=0.15)
    ax.axhline(10, color="grey", ls=":", lw=1, label="chance (mod 10)")
    ax.set_xlabel("reasoning depth L (steps)")
    ax.set_ylabel("exact match % (test)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8)
    ax.set_title("When do latent steps help? chains mod 10")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_depth.png", dpi=120)
    depths = sorted({d for v in table.values() for d in v})
    lines = ["| method | " + " | ".join(f"L = {d}" for d in depths) + " |", "|---|" + "---:|" * len(depths)]
    for method, by_depth in table.items():
        cells = [f"{by_depth[d][0]:.1f} [{by_depth[d][1]:.1f}, {by_depth[d][2]:.1f}] ({by_depth[d][3]:.0f} tok)"
                 if d in by_depth else "—" for d in depths]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (out / "depth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'accuracy_vs_depth.png'} and {out / 'depth.md'}")


if __name__ == "__main__":
    main()
