"""Figures for reports (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

from .report import ResultRow, aggregate_rows


def plot_accuracy_vs_tokens(rows: list[ResultRow], path: Path, title: str = "") -> Path:
    """Accuracy (with its 95% CI) against generated tokens per problem, one colour per method.

    Every row is a point with its Wilson interval. A method with several seeds shows its seeds as faint points and
    their mean as a large diamond with the 95% Student-t interval over seeds (``aggregate_rows``); the legend
    names each method once.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    aggs = aggregate_rows(rows)
    colour = {a.method: palette[i % len(palette)] for i, a in enumerate(aggs)}
    several = {a.method for a in aggs if len(a.seeds) > 1 and any(s is not None for s in a.seeds)}
    labelled: set[str] = set()
    for row in rows:
        acc = 100 * row.accuracy
        err = [[acc - 100 * row.ci95[0]], [100 * row.ci95[1] - acc]]
        faint = row.method in several
        label = None
        if not faint and row.method not in labelled:
            label = row.method if row.seed is None else f"{row.method} (seed {row.seed})"
            labelled.add(row.method)
        ax.errorbar([row.mean_generated_tokens], [acc], yerr=err, fmt="o", capsize=3 if faint else 4,
                    color=colour[row.method], alpha=0.35 if faint else 1.0, markersize=4 if faint else 6, label=label)
    for a in aggs:
        if a.method not in several:
            continue
        acc = 100 * a.accuracy
        yerr = None if math.isnan(a.ci95[0]) else [[acc - 100 * a.ci95[0]], [100 * a.ci95[1] - acc]]
        ax.errorbar([a.mean_generated_tokens], [acc], yerr=yerr, fmt="D", capsize=6, markersize=8,
                    color=colour[a.method], markeredgecolor="black", elinewidth=2,
                    label=f"{a.method} (mean of {len(a.seeds)} seeds)")
    ax.set_xlabel("generated tokens per problem (latent steps + answer)")
    ax.set_ylabel("accuracy (%), 95% CI" + (" (means: t over seeds)" if several else ""))
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
