"""The Markdown report of ``lori analyze``, rendered from the ``analysis.json`` dictionary (so a saved analysis can be
re-rendered without a model)."""

from __future__ import annotations

import statistics

from .figures import ANALYSIS_JSON, MODES

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


def _necessity_lines(nc: dict) -> list[str]:
    """The latent-necessity checks (lori.analysis.necessity) as a section of the report."""
    sw = nc["swapped"]
    lines = ["### Are the thoughts necessary?", "",
             f"Greedy answers on the {nc['n']} sampled problems with the {nc['latent_steps']} thoughts (the embeddings "
             f"fed at the latent steps) replaced (seed {nc['seed']}). *changed*: the share whose answer differs from "
             "the student's own. A student whose accuracy does not fall here is not reasoning in its thoughts.", "",
             "| thoughts | accuracy | answer changed |", "|---|---:|---:|"]
    names = {"clean": "the student's own", "zeroed": "zeroed", "noise": "noise of the same norm",
             "shuffled": "another problem's (shuffled)", "swapped": "swapped between pairs of problems"}
    lines += [f"| {label} | {_pct(nc[k]['accuracy'])} | {_pct(nc[k]['changed'])} |" for k, label in names.items()]
    lines += ["", f"Swapped ({sw['pairs']} pairs): {_pct(sw['follows_partner'])} of the answers are the partner's "
              f"gold answer (the answer follows the thoughts; by coincidence {_pct(sw['partner_gold_is_own'])} of the "
              "partners share the gold answer).", ""]
    if nc["per_step"]:
        lines += ["Per step k: only the thought that carries step k set to another problem's, the later thoughts "
                  "computed by the student. *follows*: among the problems whose answer the new value of step k "
                  "changes, the share answering what it implies (chains: the later steps recomputed from it).", "",
                  "| step | thought | answer changed | accuracy | problems moved | follows |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r['thought']} | {_pct(r['changed'])} | {_pct(r['accuracy'])} | "
                  f"{'—' if r['implied'] is None else r['implied']} | "
                  f"{'—' if r['follows_implied'] is None else _pct(r['follows_implied'])} |" for r in nc["per_step"]]
        lines.append("")
    return lines


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
    lines += ["| layer | condition | entropy eff. rank | participation ratio | "
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
        if st.get("necessity"):
            lines += _necessity_lines(st["necessity"])
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
