"""Figures for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from .report import ResultRow


def plot_accuracy_vs_tokens(rows: list[ResultRow], path: Path, title: str = "") -> Path:
    """Accuracy (with its 95% CI) against generated tokens per problem, one point per row, labelled by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in rows:
        acc = 100 * row.accuracy
        err = [[acc - 100 * row.ci95[0]], [100 * row.ci95[1] - acc]]
        label = row.method if row.seed is None else f"{row.method} (seed {row.seed})"
        ax.errorbar([row.mean_generated_tokens], [acc], yerr=err, fmt="o", capsize=4, label=label)
    ax.set_xlabel("generated tokens per problem (latent steps + answer)")
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
