"""The figures of ``lori analyze`` (:mod:`lori.analysis.measure` measures; this module only draws). :func:`write_figures`
takes the ``analysis.json`` dictionary, so a saved analysis can be redrawn without a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

ANALYSIS_JSON = "analysis.json"
REPORT_MD = "report.md"
MODES = ("layer", "position", "hidden")
FIGURES = {
    "spectra": "spectra.png",
    "energy": "energy.png",
    "modes": "modes.png",
    "ranks": "ranks.png",
    "overlap": "overlap.png",
}
STYLE = {  # colour, line style, width
    "teacher": ("C0", "-", 2.2),
    "random_weights": ("0.45", "--", 1.4),
    "shuffled": ("C1", "-.", 1.4),
    "random_tokens": ("C2", ":", 1.8),
    "student": ("C3", "-", 1.6),
}

# ----------------------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib  # here: matplotlib loads when a figure is drawn, not with every lori analyze import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    return plt


def _grid(n: int, width: float = 3.6, height: float = 2.9):
    plt = _plt()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(width * cols, 9.0), height * rows + 0.9), dpi=110,
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _legend_below(fig, ax):
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)


def _label(res: dict, name: str) -> str:
    return res["conditions"][name]["label"]


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator  # (as in _plt)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> None:
    fig.savefig(path)
    _plt().close(fig)


def write_figures(res: dict, out_dir: Path) -> dict[str, str]:
    plt = _plt()
    figs = {}
    names = list(res["conditions"])
    layers = res["layers"]
    r = res["rank"]

    # 1. normalised hidden-mode spectra per layer
    fig, axes = _grid(len(layers))
    for i, (ax, layer) in enumerate(zip(axes, layers)):
        for name in names:
            s = torch.tensor(res["conditions"][name]["layers"][i]["uncentred"]["singular_values"])
            y = (s / s[0]).clamp_min(1e-12) if s[0] > 0 else s
            c, ls, lw = STYLE[name]
            ax.semilogy(range(1, len(y) + 1), y.tolist(), color=c, ls=ls, lw=lw, label=_label(res, name))
        ax.axvline(r, color="k", lw=0.8, ls=(0, (2, 2)), label=f"analysis rank r = {r}")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("component i", fontsize=8)
        ax.set_ylabel("s_i / s_1 (log scale)", fontsize=8)
        _integer_ticks(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Hidden-mode spectrum per layer (uncentred second moment), {res['n_problems']} problems",
                 fontsize=10)
    _legend_below(fig, axes[0])
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    _save(fig, out_dir / FIGURES["spectra"])
    figs["spectra"] = FIGURES["spectra"]

    # 2. cumulative energy per layer with the thresholds
    fig, axes = _grid(len(layers))
    for i, (ax, layer) in enumerate(zip(axes, layers)):
        for name in names:
            cum = res["conditions"][name]["layers"][i]["uncentred"]["cumulative_energy"]
            c, ls, lw = STYLE[name]
            ax.plot(range(1, len(cum) + 1), cum, color=c, ls=ls, lw=lw, label=_label(res, name))
        for t in res["energy_thresholds"]:
            ax.axhline(t, color="k", lw=0.5, alpha=0.5)
            ax.text(1.0, t, f" {t:.0%}", fontsize=6, va="center", transform=ax.get_yaxis_transform())
        ax.axvline(r, color="k", lw=0.8, ls=(0, (2, 2)), label=f"analysis rank r = {r}")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.01)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("number of components k (log scale)", fontsize=8)
        ax.set_ylabel("energy fraction in top k", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Cumulative energy of the hidden-mode spectrum per layer (lines: 80 / 90 / 95 / 99%)", fontsize=10)
    _legend_below(fig, axes[0])
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    _save(fig, out_dir / FIGURES["energy"])
    figs["energy"] = FIGURES["energy"]

    # 3. tensor modes
    with_modes = [n for n in names if res["conditions"][n]["modes"]]
    if with_modes:
        fig, axes = plt.subplots(2, 3, figsize=(12, 7.2), dpi=110)
        for j, mode in enumerate(MODES):
            for name in with_modes:
                m = res["conditions"][name]["modes"][mode]
                s = torch.tensor(m["singular_values"])
                y = (s / s[0]).clamp_min(1e-12) if s[0] > 0 else s
                c, ls, lw = STYLE[name]
                x = range(1, len(y) + 1)
                axes[0, j].semilogy(x, y.tolist(), color=c, ls=ls, lw=lw, marker="o" if len(y) <= 32 else None,
                                    ms=3, label=_label(res, name))
                axes[1, j].plot(x, m["cumulative_energy"], color=c, ls=ls, lw=lw,
                                marker="o" if len(y) <= 32 else None, ms=3, label=_label(res, name))
            what = {"layer": "layer mode (L x ...)", "position": "position mode (rationale tokens; student: "
                    "latent steps)", "hidden": "hidden mode (d x ...)"}[mode]
            axes[0, j].set_title(what, fontsize=9)
            axes[0, j].set_xlabel("component i", fontsize=8)
            axes[0, j].set_ylabel("s_i / s_1 (log scale)", fontsize=8)
            axes[1, j].set_xlabel("number of components k" + (" (log scale)" if mode == "hidden" else ""),
                                  fontsize=8)
            if mode != "hidden":
                _integer_ticks(axes[0, j])
                _integer_ticks(axes[1, j])
            else:
                _integer_ticks(axes[0, j])
            axes[1, j].set_ylabel("energy fraction in top k", fontsize=8)
            axes[1, j].set_ylim(0, 1.01)
            for t in res["energy_thresholds"]:
                axes[1, j].axhline(t, color="k", lw=0.5, alpha=0.5)
            if mode == "hidden":
                axes[1, j].set_xscale("log")
                axes[1, j].axvline(r, color="k", lw=0.8, ls=(0, (2, 2)))
            for ax in axes[:, j]:
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
        T = res["rationale_length"]["common_positions"]
        fig.suptitle(f"Mode-n unfolding spectra of the trajectory tensor [problems x {len(layers)} layers x {T} "
                     f"positions x {res['hidden_size']} hidden]", fontsize=10)
        _legend_below(fig, axes[0, 0])
        fig.tight_layout(rect=(0, 0.08, 1, 0.96))
        _save(fig, out_dir / FIGURES["modes"])
        figs["modes"] = FIGURES["modes"]

    # 4. per-layer summary numbers
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.9), dpi=110)
    panels = [("effective_rank_entropy", "entropy effective rank exp(H)"),
              ("participation_ratio", "participation ratio"),
              ("energy_at_rank", f"energy fraction in top r = {r}")]
    for ax, (key, title) in zip(axes, panels):
        for name in names:
            y = [row["uncentred"][key] for row in res["conditions"][name]["layers"]]
            c, ls, lw = STYLE[name]
            ax.plot(layers, y, color=c, ls=ls, lw=lw, marker="o", ms=4, label=_label(res, name))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_xticks(layers if len(layers) <= 16 else layers[:: max(1, len(layers) // 12)])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1.02)
    fig.suptitle("Per-layer low-rank summary (hidden mode, uncentred)", fontsize=10)
    _legend_below(fig, axes[0])
    fig.tight_layout(rect=(0, 0.13, 1, 0.95))
    _save(fig, out_dir / FIGURES["ranks"])
    figs["ranks"] = FIGURES["ranks"]

    # 5. student / teacher overlap
    st = res.get("student_analysis")
    if st and st.get("overlap"):
        rows = st["overlap"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
        cmap = plt.get_cmap("viridis")
        for i, row in enumerate(rows):
            cos = row["principal_cosines"]
            axes[0].plot(range(1, len(cos) + 1), cos, marker="o", ms=3, color=cmap(i / max(1, len(rows) - 1)),
                         label=f"layer {row['layer']}")
        axes[0].set_xlabel("principal angle index i (most aligned first)", fontsize=8)
        _integer_ticks(axes[0])
        axes[0].set_ylabel("cos(theta_i)", fontsize=8)
        axes[0].set_ylim(0, 1.02)
        axes[0].set_title(f"Principal cosines, student latent vs teacher top-{st['overlap_rank']} subspace",
                          fontsize=9)
        axes[0].legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
        x = [row["layer"] for row in rows]
        axes[1].bar(x, [row["mean_cos2"] for row in rows], color="C3", alpha=0.7, label="mean cos^2 (overlap)")
        axes[1].plot(x, [row["chance_mean_cos2"] for row in rows], "k--", lw=1,
                     label="chance (random subspaces): r/d")
        axes[1].plot(x, [row["student_energy_in_teacher_subspace"] for row in rows], "s-", color="C0", ms=4,
                     label="student latent energy inside teacher subspace")
        axes[1].set_ylim(0, 1.02)
        axes[1].set_xlabel("layer", fontsize=8)
        axes[1].set_xticks(x if len(x) <= 16 else x[:: max(1, len(x) // 12)])
        axes[1].set_ylabel("fraction", fontsize=8)
        axes[1].set_title("Subspace overlap per layer", fontsize=9)
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        _save(fig, out_dir / FIGURES["overlap"])
        figs["overlap"] = FIGURES["overlap"]
    return figs
