"""The main report of benchmarks/speed.py as Markdown: the machine, the training-step, inference, precompute and
cache-size tables, and the project's targets, each marked met or missed."""

from __future__ import annotations

import os
import platform

import torch

from speed_common import WARMUP, Clock, PeakMemory
from speed_inference import STEP_GAP

# The project's targets (issues 7 and 17)
TARGET_TRAIN = 0.7  # LoRi training step time <= 0.7 x CODI's
TARGET_SPEEDUP = 0.9  # inference speedup >= 0.9 x the teacher / student ratio of generated tokens (decoding steps)
TARGET_CACHE = 50.0  # cache >= 50 x smaller than the raw fp32 teacher trajectories it replaces
TARGET_PRECOMPUTE = 0.8  # precompute's statistics pass >= 0.8 x the throughput of the teacher's bare forward pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mib(b: float) -> str:
    return "n/a" if b != b else f"{b / 2**20:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def machine_lines(args, device, bf16) -> str:
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return "\n".join([
        "## LoRi speed benchmark",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu_model()} ({os.cpu_count()} logical cores) |",
        f"| torch | {torch.__version__}; {torch.get_num_threads()} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}) |",
        f"| device | {dev}; training {'bf16 autocast' if bf16 else 'fp32'}, inference and precompute float32 |",
        f"| clock | {Clock.name} |",
        f"| models | random-init {args.arch}, {args.layers} layers, {args.heads} heads, FFN 4 x width; "
        f"{args.digits[0]}x{args.digits[1]} multiplication |",
        "",
    ])


def render_report(args, device, n_params, train_rows, terms, infer, per_step, pre, widths, cfg) -> str:
    K = args.latent_steps
    lines = [
        "| setup | |",
        "|---|---|",
        f"| main run | width {args.hidden} ({n_params / 1e6:.2f} M parameters); batch {args.batch}; {args.steps} "
        f"timed steps (median, after {WARMUP} warm-up); K = {K} for LoRi and CODI (projectors: LoRi "
        f"{cfg.lori.projector}, CODI {cfg.codi.projector}); rank {min(args.rank, args.hidden)}; cache "
        f"{cfg.lori.cache_dtype}, per-step statistics {'kept' if cfg.lori.cache_steps else 'left out'}; "
        f"{args.problems} inference problems; {pre['n']} precomputed examples |",
        f"| memory | {PeakMemory.how} |",
        "",
        "### Training step (forward + backward + AdamW)",
        "",
        "| method | positions / example | step ms (median) | / CoT-SFT | / CODI | peak memory MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cot, codi_t = train_rows["cot"][2], train_rows["codi"][2]
    for label, width, t, mem in train_rows.values():
        lines.append(f"| {label} | {width} | {1000 * t:.1f} | {t / cot:.2f} | {t / codi_t:.2f} | {mib(mem)} |")
    lori_t, fly_t = train_rows["lori"][2], train_rows["fly"][2]
    train_ratio = lori_t / codi_t
    lines += [
        "",
        f"- LoRi / CODI step time (K = {K} both): **{train_ratio:.2f}** (target <= {TARGET_TRAIN}: "
        f"{verdict(train_ratio <= TARGET_TRAIN)})",
        f"- LoRi / CoT-SFT step time: **{lori_t / cot:.2f}**",
        f"- LoRi precomputed / on-the-fly teacher step time: **{lori_t / fly_t:.2f}** "
        f"(the teacher run in the step would add {100 * (fly_t / lori_t - 1):.0f}% to a LoRi step)",
        f"- LoRi loss terms (forward + backward, alone at this step's shapes): {1000 * terms['total']:.2f} ms = "
        f"**{100 * terms['total'] / lori_t:.1f}%** of the LoRi step (cache read {1000 * terms['read']:.2f}, "
        f"projection {1000 * terms['projection']:.2f}, moments {1000 * terms['moments']:.2f}, covariance "
        f"{1000 * terms['covariance']:.2f} ms); the model (latent forward, backward, AdamW) is the rest",
        "",
        "### Inference (greedy, KV cache, length forced)",
        "",
        f"| model | decoding steps / problem | latency ms (batch 1) | throughput problems/s (batch {args.problems}) "
        "| peak MiB (batch 1) | peak MiB (batch N) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"teacher": "explicit-CoT teacher (rationale + answer)",
             "student": f"LoRi student (K={K} + <eot> + answer)"}
    for key, r in infer.items():
        lines.append(f"| {names[key]} | {r['steps']:.0f} | {1000 * r['latency']:.1f} | {r['throughput']:.1f} | "
                     f"{mib(r['latency_mem'])} | {mib(r['throughput_mem'])} |")
    t, s = infer["teacher"], infer["student"]
    ratio = t["steps"] / s["steps"]
    target = TARGET_SPEEDUP * ratio
    lat, thr = t["latency"] / s["latency"], s["throughput"] / t["throughput"]
    (tok1, lat1), (tokn, latn) = per_step["batch1"], per_step["batched"]
    lines += [
        "",
        f"| teacher / student | value | target (>= {TARGET_SPEEDUP} x step ratio) |",
        "|---|---:|---|",
        f"| decoding-step ratio | {ratio:.2f} | |",
        f"| latency speedup (batch 1) | {lat:.2f} | >= {target:.2f}: {verdict(lat >= target)} |",
        f"| throughput speedup (batch {args.problems}) | {thr:.2f} | >= {target:.2f}: {verdict(thr >= target)} |",
        "",
        f"One decoding step, by difference of generations {STEP_GAP} steps apart (prefill and fixed overhead cancel; "
        "all generations of this section taken in turn):",
        "",
        "| one step | decoded token (teacher) ms | latent step (student: projector + forward) ms | latent / token |",
        "|---|---:|---:|---:|",
        f"| batch 1 | {1000 * tok1:.3f} | {1000 * lat1:.3f} | {lat1 / tok1:.2f} |",
        f"| batch {args.problems} | {1000 * tokn:.3f} | {1000 * latn:.3f} | {latn / tokn:.2f} |",
        "",
    ]

    n = pre["n"]
    stats_s, stats_n, tokens = pre["stats"]
    calib_s, calib_n = pre["calib"]
    rest = pre["total"] - pre["load"]
    per = lambda count, sec: f"{count / sec:,.0f}" if sec > 0 else "n/a"  # noqa: E731
    bare = pre["bare"]
    pre_ratio = bare / stats_s if stats_s > 0 else float("nan")
    cache_ratio = pre["raw"] / max(pre["cache"], 1)
    lines += [
        f"### Precompute (`lori precompute`, {n} examples, {tokens / max(stats_n, 1):.1f} teacher tokens / example, "
        f"batches of {pre['batch']}, on {pre['device']}; medians of {pre['rounds']} calls, each after one bare "
        "forward pass)",
        "",
        "| part of the one precompute call | seconds | examples/s | tokens/s | / bare forward |",
        "|---|---:|---:|---:|---:|",
        f"| the teacher's bare forward pass on the same batches (logits only; not part of the call, the limit of a "
        f"one-pass precompute) | {bare:.3f} | {per(n, bare)} | {per(tokens, bare)} | 1.00 |",
        f"| teacher pass + statistics (every example: no-grad forward with every layer's hidden states, then mean / "
        f"covariance / anchor{' / prefix means / step states' if cfg.lori.cache_steps else ''} in the subspace) | "
        f"{stats_s:.3f} | {per(stats_n, stats_s)} | {per(tokens, stats_s)} | **{pre_ratio:.2f}** |",
        f"| calibration pass (teacher forwards on {calib_n} examples that fit the subspace) | {calib_s:.3f} | "
        f"{per(calib_n, calib_s)} | | |",
        f"| whole call without the model load (the two passes, basis fit, hashing, rendering, writing) | {rest:.3f} | "
        f"{per(n, rest)} | {per(tokens, rest)} | {bare / rest:.2f} |",
        f"| whole call (+ teacher load {pre['load']:.3f} s) | {pre['total']:.3f} | {per(n, pre['total'])} | "
        f"{per(tokens, pre['total'])} | {bare / pre['total']:.2f} |",
        "",
        f"Peak memory of the whole call: {mib(pre['mem'])} MiB.",
        "",
        f"| per example (this run's cache: {cfg.lori.cache_dtype}, per-step statistics "
        f"{'kept' if cfg.lori.cache_steps else 'left out'}) | bytes |",
        "|---|---:|",
        f"| raw fp32 teacher trajectories it replaces (rationale positions + anchor, every layer) | "
        f"{pre['raw'] / n:,.0f} |",
        f"| cache (statistics shards; the shared basis file is a one-off, not counted) | {pre['cache'] / n:,.0f} |",
        f"| raw / cache | **{cache_ratio:.1f}x** "
        f"(target >= {TARGET_CACHE:.0f}x: {verdict(cache_ratio >= TARGET_CACHE)}) |",
        "",
        f"### Cache size by width (rank {args.rank}, {args.layers} layers, {args.digits[0]}x{args.digits[1]}; "
        "raw fp32 trajectories / cache, per example; float16 has bfloat16's size)",
        "",
        "| width | raw bytes | float32, per-step kept (lori default) | float32, per-step left out | "
        "bfloat16, per-step kept | bfloat16, per-step left out |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in widths:
        raw = row[("float32", True)][0]
        cells = [f"{r / c:.1f}x ({c:,.0f} B)" for (r, c) in (row[(d, k)] for d in ("float32", "bfloat16")
                                                            for k in (True, False))]
        lines.append(f"| {row['width']} | {raw:,.0f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Targets",
        "",
        "| target | measured | result |",
        "|---|---:|---|",
        f"| LoRi training step <= {TARGET_TRAIN} x CODI's (same model, batch, K = {K}) | {train_ratio:.2f} x | "
        f"{verdict(train_ratio <= TARGET_TRAIN)} |",
        f"| inference latency speedup (batch 1) >= {TARGET_SPEEDUP} x generated-token ratio ({ratio:.2f}) = "
        f"{target:.2f} | {lat:.2f} x | {verdict(lat >= target)} |",
        f"| inference throughput speedup (batch {args.problems}) >= {TARGET_SPEEDUP} x generated-token ratio "
        f"= {target:.2f} | {thr:.2f} x | {verdict(thr >= target)} |",
        f"| cache >= {TARGET_CACHE:.0f} x smaller per example than raw fp32 trajectories (width {args.hidden}, "
        f"{cfg.lori.cache_dtype}, per-step statistics {'kept' if cfg.lori.cache_steps else 'left out'}) | "
        f"{cache_ratio:.1f} x | {verdict(cache_ratio >= TARGET_CACHE)} |",
        f"| precompute throughput (teacher pass + statistics) >= {TARGET_PRECOMPUTE} x the teacher's bare forward "
        f"on the same batches | {pre_ratio:.2f} x ({per(stats_n, stats_s)} vs {per(n, bare)} ex/s) | "
        f"{verdict(pre_ratio >= TARGET_PRECOMPUTE)} |",
        "",
    ]
    return "\n".join(lines)
