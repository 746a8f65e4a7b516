"""Figures for reports (matplotlib, headless)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .results import ResultRow, aggregate_rows, unfinished


def _save(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its folder) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_vs_tokens(rows: list[ResultRow], path: Path, title: str = "") -> Path:
    """Accuracy (with its 95% CI) against generated tokens per problem, one colour per method.

    Every row is a point with its Wilson interval. A method with several seeds shows its seeds as faint points and
    their mean as a large diamond with the 95% Student-t interval over seeds (``aggregate_rows``); the legend
    names each method once. A run that ended before its final curriculum stage is hollow and "unfinished" in the
    legend.
    """
    import matplotlib  # here: matplotlib loads when a plot is drawn, not with every report import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

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
            label += " (unfinished)" if unfinished(row) else ""
            labelled.add(row.method)
        # an unfinished run (ended before its final curriculum stage): a hollow marker
        ax.errorbar([row.mean_generated_tokens], [acc], yerr=err, fmt="o", capsize=3 if faint else 4,
                    color=colour[row.method], alpha=0.35 if faint else 1.0, markersize=4 if faint else 6, label=label,
                    **({"markerfacecolor": "none"} if unfinished(row) else {}))
    for a in aggs:
        if a.method not in several:
            continue
        acc = 100 * a.accuracy
        yerr = None if math.isnan(a.ci95[0]) else [[acc - 100 * a.ci95[0]], [100 * a.ci95[1] - acc]]
        ax.errorbar([a.mean_generated_tokens], [acc], yerr=yerr, fmt="D", capsize=6, markersize=8,
                    color=colour[a.method], markeredgecolor="black", elinewidth=2,
                    label=f"{a.method} (mean of {len(a.seeds)} seeds"
                          + (f"; unfinished in {a.unfinished})" if a.unfinished else ")"),
                    **({"markerfacecolor": "none"} if a.unfinished else {}))
    ax.set_xlabel("generated tokens per problem (latent steps + answer)")
    ax.set_ylabel("accuracy (%), 95% CI" + (" (means: t over seeds)" if several else ""))
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def answer_token_curves(metrics: Path) -> tuple[list[int], list[list[float]]]:
    """``(steps, curves)`` from a run's ``metrics.jsonl``: ``curves[j][i]`` is answer token j + 1's training
    cross-entropy (``ce_ans{j+1}``) at ``steps[i]``; empty when the run logged none (answers of varying length)."""
    steps, curves = [], []
    for line in Path(metrics).read_text().splitlines():
        record = json.loads(line)
        values = [record[k] for k in sorted((k for k in record if k.startswith("ce_ans")), key=lambda k: int(k[6:]))]
        if not values:
            continue
        if curves and len(values) != len(curves):
            raise ValueError(f"{metrics}: step {record['step']} logs {len(values)} answer tokens, earlier steps "
                             f"{len(curves)}")
        curves = curves or [[] for _ in values]
        steps.append(record["step"])
        for curve, v in zip(curves, values):
            curve.append(v)
    return steps, curves


def plot_answer_token_ce(runs: dict[str, list[Path]], path: Path, title: str = "") -> Path | None:
    """One panel per label (a method): the training cross-entropy of every answer token (a line per token, d1 = the
    first one written) against the optimizer step, averaged over the label's runs (seeds) at their common steps;
    ln 10 (a uniform digit) is drawn for reference. None (no figure) when no run logged per-token values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for label, paths in runs.items():
        curves = [answer_token_curves(p) for p in paths if Path(p).is_file()]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        common = sorted(set.intersection(*(set(s) for s, _ in curves)))
        mean = [[sum(c[j][s.index(t)] for s, c in curves) / len(curves) for t in common]
                for j in range(len(curves[0][1]))]
        panels[label] = (common, mean, len(curves))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (label, (steps, mean, n)) in zip(axes.flat, panels.items()):
        for j, curve in enumerate(mean):
            ax.plot(steps, curve, color=cmap(j / max(1, len(mean) - 1)), lw=1.2, label=f"d{j + 1}")
        ax.axhline(math.log(10), color="grey", ls=":", lw=1)
        ax.set_yscale("log")  # learned digits sit orders of magnitude below ln 10
        ax.set_title(label + (f" (mean of {n} runs)" if n > 1 else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("answer-token CE (nats, log)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
