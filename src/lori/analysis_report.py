"""Figures and the Markdown report of ``lori analyze`` (:mod:`lori.analyze` measures; this module only draws and
writes what it measured). :func:`write_figures` and :func:`render_report` take the ``analysis.json`` dictionary, so
a saved analysis can be redrawn without a model.
"""

from __future__ import annotations

import math
import statistics
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


# ------------------------------------------------------------------------------------------------------ report


def _f(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _token_md(tok: str) -> str:
    return "`" + _md(tok.replace(" ", "␣")) + "`"


def _mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


def render_report(res: dict) -> str:
    conds = res["conditions"]
    names = list(conds)
    r, d = res["rank"], res["hidden_size"]
    th = [f"{t:g}" for t in res["energy_thresholds"]]
    lines = [
        "# Low-rank structure of reasoning trajectories",
        "",
        f"Teacher `{res['teacher']}`" + (f", latent student `{res['student']}`" if res["student"] else "") +
        f"; {res['n_problems']} {res['task']} problems from the {res['split']} split "
        f"({res['n_sampled']} sampled, seed of the data config); layers {res['layers']} of {res['num_layers']}; "
        f"hidden size d = {d}; analysis rank r = {r} ({res['rank_rule']}). Rationales have "
        f"{res['rationale_length']['min']}–{res['rationale_length']['max']} tokens "
        f"(median {res['rationale_length']['median']}).",
        "",
        "**How to read.** A trajectory is the teacher's hidden states over the rationale tokens. For each layer we "
        "take the spectrum of its uncentred second moment (the matrix LoRi's per-layer basis is fitted on): "
        "singular values s, energies s². *Energy at r* is the fraction of the energy in the top r directions — "
        "exactly what a rank-r LoRi basis keeps. *r80…r99*: directions needed for that much energy. *Entropy "
        "effective rank* exp(H(p)) with p = s²/Σs², and *participation ratio* (Σs²)²/Σs⁴, both equal k for k equal "
        "directions. Where the teacher is lower-rank than a control, the structure comes from what that control "
        "removes: training (random weights), token order (shuffled), or token content (random tokens).",
        "",
        "Conditions:",
        "",
    ]
    for name in names:
        c = conds[name]
        lines.append(f"- **{name}**: {c['description']} — {c['n_examples']} problems, {c['n_positions']} positions")
    lines += ["", "Random weights: Hugging Face's initialisation of the teacher's architecture after "
              f"`torch.manual_seed({res['seed']})` (for a tiny model trained with `train.seed: {res['seed']}` "
              "exactly the teacher before training). The shuffled / random-token controls keep every prompt, "
              "length and answer and change only the rationale tokens.", "", "## Summary", ""]
    summary = []
    for name in names:
        rows = conds[name]["layers"]
        summary.append((name, _mean([x["uncentred"]["energy_at_rank"] for x in rows]),
                        _mean([x["centred"]["energy_at_rank"] for x in rows]),
                        _mean([x["uncentred"]["effective_rank_entropy"] for x in rows]),
                        _mean([x["uncentred"]["participation_ratio"] for x in rows]),
                        _mean([x["uncentred"]["rank_for_energy"]["0.9"] for x in rows])))
    lines += [f"| condition | energy at r = {r} (mean over layers) | centred: energy at r | entropy eff. rank | "
              "participation ratio | r90 |", "|---|---|---|---|---|---|"]
    for name, e, ec, er, pr, r90 in summary:
        lines.append(f"| {name} | {_pct(e)} | {_pct(ec)} | {_f(er)} | {_f(pr)} | {_f(r90, 1)} |")
    lines.append("")
    t = conds["teacher"]["layers"]
    best = max(t, key=lambda x: x["uncentred"]["energy_at_rank"])
    worst = min(t, key=lambda x: x["uncentred"]["energy_at_rank"])
    ctrl = ", ".join(f"{n} {_pct(e)}" for n, e, *_ in summary if n not in ("teacher", "student"))
    lines += [
        f"Averaged over layers, the trained teacher keeps {_pct(summary[0][1])} of its trajectory energy in the top "
        f"r = {r} of d = {d} directions (controls: {ctrl}). Most concentrated: layer {best['layer']} "
        f"({_pct(best['uncentred']['energy_at_rank'])}, entropy effective rank "
        f"{_f(best['uncentred']['effective_rank_entropy'])}); least: layer {worst['layer']} "
        f"({_pct(worst['uncentred']['energy_at_rank'])}, "
        f"{_f(worst['uncentred']['effective_rank_entropy'])}). With the mean direction removed (centred covariance) "
        f"the teacher keeps {_pct(summary[0][2])} at rank r.",
        "",
    ]
    st = res.get("student_analysis")
    if st and st.get("overlap"):
        ov = st["overlap"]
        inside = _mean([x["student_energy_in_teacher_subspace"] for x in ov])
        lines += [
            f"Student: the mean cos² between its top-{st['overlap_rank']} latent subspace and the teacher's is "
            f"{_f(min(x['mean_cos2'] for x in ov))}–{_f(max(x['mean_cos2'] for x in ov))} across layers (chance "
            f"{_f(ov[0]['chance_mean_cos2'])}); on average {_pct(inside)} "
            "of its latent-state energy lies inside the teacher's top-r subspace.",
            "",
        ]

    figs = res["figures"]
    lines += ["## Per-layer spectra", ""]
    if "spectra" in figs:
        lines += [f"![Normalised hidden-mode singular values per layer, teacher and controls]({figs['spectra']})", ""]
    if "energy" in figs:
        lines += [f"![Cumulative energy per layer with 80/90/95/99% lines]({figs['energy']})", ""]
    if "ranks" in figs:
        lines += [f"![Effective rank, participation ratio and energy at r per layer]({figs['ranks']})", ""]
    lines += [f"| layer | condition | entropy eff. rank | participation ratio | "
              + " | ".join(f"r{float(x) * 100:g}" for x in th) + f" | energy at r = {r} | centred eff. rank | "
              "centred energy at r |",
              "|---|---|---|---|" + "---|" * len(th) + "---|---|---|"]
    for i, layer in enumerate(res["layers"]):
        for name in names:
            u, c = conds[name]["layers"][i]["uncentred"], conds[name]["layers"][i]["centred"]
            lines.append(f"| {layer} | {name} | {_f(u['effective_rank_entropy'])} | {_f(u['participation_ratio'])} | "
                         + " | ".join(str(u["rank_for_energy"][x]) for x in th)
                         + f" | {_pct(u['energy_at_rank'])} | {_f(c['effective_rank_entropy'])} | "
                         f"{_pct(c['energy_at_rank'])} |")
    lines.append("")

    lines += ["## Tensor modes", "",
              f"The trajectory tensor [problems × layers × positions × hidden], every rationale truncated to its first "
              f"{res['rationale_length']['common_positions']} tokens (the shortest in the sample); for the student "
              "the positions are its latent steps. Singular values of each mode-n unfolding (problems are columns).",
              ""]
    if "modes" in figs:
        lines += [f"![Mode-n unfolding spectra and cumulative energy]({figs['modes']})", ""]
    lines += ["| mode | condition | size | entropy eff. rank | participation ratio | "
              + " | ".join(f"r{float(x) * 100:g}" for x in th) + " | energy at rank |",
              "|---|---|---|---|---|" + "---|" * len(th) + "---|"]
    for mode in MODES:
        for name in names:
            m = conds[name]["modes"]
            if not m:
                continue
            s = m[mode]
            at = "—" if s["rank"] is None else f"{_pct(s['energy_at_rank'])} (rank {s['rank']})"
            lines.append(f"| {mode} | {name} | {s['dim']} | {_f(s['effective_rank_entropy'])} | "
                         f"{_f(s['participation_ratio'])} | " + " | ".join(str(s["rank_for_energy"][x]) for x in th)
                         + f" | {at} |")
    lines.append("")

    if st:
        lines += ["## LoRi student", "",
                  f"Checkpoint `{st['checkpoint']}`, K = {st['latent_steps']} latent steps, projector "
                  f"{st['projector']}.", ""]
        if st.get("overlap"):
            lines += [f"Principal angles between the student's top-{st['overlap_rank']} latent subspace (uncentred "
                      "second moment of its latent states) and the teacher's top-r subspace, per layer. cos = 1: a "
                      "shared direction; mean cos² = 1: the same subspace; chance for random subspaces is r/d.", ""]
            if "overlap" in figs:
                lines += [f"![Principal cosines and subspace overlap per layer]({figs['overlap']})", ""]
            lines += ["| layer | mean cos² | chance r/d | largest cos | smallest cos | student energy in teacher "
                      "subspace |", "|---|---|---|---|---|---|"]
            for row in st["overlap"]:
                c = row["principal_cosines"]
                lines.append(f"| {row['layer']} | {_f(row['mean_cos2'], 3)} | {_f(row['chance_mean_cos2'], 3)} | "
                             f"{_f(c[0], 3)} | {_f(c[-1], 3)} | {_pct(row['student_energy_in_teacher_subspace'])} |")
            lines.append("")
        elif st.get("overlap_skipped"):
            lines += [f"Subspace overlap skipped: {st['overlap_skipped']}.", ""]
        if st.get("step_values"):
            lines += ["### Does the latent chain hold step k's value?", "",
                      "Share of the sampled problems whose state that feeds step k's thought (`<bot>` for step 1, "
                      "else the thought before) decodes through the LM head, as its top token, to the value the "
                      "teacher's rationale writes at step k.", "",
                      "| step | problems | the state says v_k |", "|---:|---:|---:|"]
            lines += [f"| {r['step']} | {r['n']} | {_pct(r['share'])} |" for r in st["step_values"]]
            lines.append("")
        if st["probe"]:
            lines += ["### What the latent steps say", "",
                      "Each latent step's last-layer hidden state decoded through the LM head: the five most likely "
                      "tokens with their probabilities (␣ marks a space).", ""]
            for j, p in enumerate(st["probe"], 1):
                lines += [f"**Problem {j}.** `{_md(p['question'])}` — rationale `{_md(p['rationale'])}`, answer "
                          f"`{_md(p['answer'])}`; the student writes `{_md(p['student_output']) or '(nothing)'}`.", "",
                          "| latent step | top-5 tokens (probability) |", "|---|---|"]
                for s in p["steps"]:
                    lines.append(f"| {s['step']} | " + ", ".join(f"{_token_md(t)} {q:.3f}" for t, q in s["top"]) + " |")
                lines.append("")
    lines += ["## Numbers", "", f"Everything above, with the full spectra and curves, is in `{ANALYSIS_JSON}`.", ""]
    return "\n".join(lines)
