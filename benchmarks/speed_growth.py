"""The growth sweep of benchmarks/speed.py (``--growth``, ``--growth-only``): LoRi's training step time and memory
against K, the rank and the width, one varied at a time around ``--growth-base``, beside CoT-SFT and CODI at the
same shapes, with the share of LoRi's loss terms."""

from __future__ import annotations

import sys
from pathlib import Path

from speed_common import WARMUP
from speed_precompute import quiet_precompute
from speed_report import mib
from speed_training import Point

def growth_sweep(args, device, autocast, folder: Path) -> str:
    """LoRi's step time and memory against K, rank and width (one varied at a time around --growth-base), beside
    CoT-SFT and CODI at the same shapes, with the share of the LoRi loss terms."""
    K0, r0, w0 = args.growth_base
    points = [("base", K0, r0, w0)]
    points += [("K", k, r0, w0) for k in args.growth_K if k != K0]
    points += [("rank", K0, r, w0) for r in args.growth_rank if r != r0]
    points += [("width", K0, r0, w) for w in args.growth_width if w != w0]
    n = args.growth_batch
    rows = []
    for i, (varied, K, r, w) in enumerate(points):
        print(f"[speed] growth point {i + 1}/{len(points)}: K={K} r={r} width={w}", file=sys.stderr, flush=True)
        pt = Point(folder / f"p{i}", args, device, hidden=w, latent_steps=K, rank=r, n_examples=n,
                   cache_dtype=args.cache_dtype, cache_steps=args.cache_steps)
        quiet_precompute(pt.cfg)
        times, terms = pt.step_times(["cot", "codi", "lori"], n, args.growth_steps, autocast, terms=True)
        rows.append({"varied": varied, "K": K, "r": min(r, w), "width": w, "params": pt.n_params, **times,
                     "terms": terms})
        del pt
    return render_growth(args, rows)


def render_growth(args, rows: list[dict]) -> str:
    K0, r0, w0 = args.growth_base
    lines = [
        f"### Growth: LoRi's training step against K, rank and width (one varied at a time around K = {K0}, "
        f"r = {r0}, width {w0}; batch {args.growth_batch}, {args.growth_steps} timed steps after {WARMUP} warm-up, "
        "median)",
        "",
        "CoT-SFT and CODI (same K as LoRi) at the same shapes, their steps and LoRi's taken in turn at each point "
        "(compare the ratios within a row; absolute times across rows move with the machine's load). *LoRi terms*: "
        "the loss terms' forward + backward alone at the step's shapes (cache read, projection, moments, "
        "covariance; `loss_term_fns`, timed in the same turns), as a share of the LoRi step; the model is the rest.",
        "",
        "| varied | K | r | width | params M | CoT-SFT ms | CODI ms | LoRi ms | LoRi / CODI | LoRi / CoT-SFT | "
        "LoRi terms ms (share) | projection | moments | covariance | cache read | peak MiB CoT-SFT / CODI / LoRi |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cot, codi_t, lori_t = r["cot"][0], r["codi"][0], r["lori"][0]
        tm = r["terms"]
        ms = lambda x: f"{1000 * max(x, 0.0):.2f}"  # noqa: E731  (a difference of medians can dip below 0)
        lines.append(
            f"| {r['varied']} | {r['K']} | {r['r']} | {r['width']} | {r['params'] / 1e6:.2f} | {1000 * cot:.1f} | "
            f"{1000 * codi_t:.1f} | {1000 * lori_t:.1f} | {lori_t / codi_t:.2f} | {lori_t / cot:.2f} | "
            f"{ms(tm['total'])} ({100 * tm['total'] / lori_t:.1f}%) | {ms(tm['projection'])} | {ms(tm['moments'])} | "
            f"{ms(tm['covariance'])} | {ms(tm['read'])} | {mib(r['cot'][1])} / {mib(r['codi'][1])} / "
            f"{mib(r['lori'][1])} |")
    lines.append("")
    return "\n".join(lines)
