"""The precompute side of benchmarks/speed.py: whole ``lori precompute`` calls timed stage by stage (the
``timer`` argument of ``lori.methods.lori.teacher.precompute``) against the teacher's bare forward pass on the same
batches, and the cache's size per example by width, dtype and per-step statistics."""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import PartialState

from lori.methods.lori.cache import read_manifest
from lori.methods.lori.method import resolve_layers
from lori.methods.lori.teacher import precompute, render_teacher, teacher_trajectories
from lori.utils import pad
from speed_common import PeakMemory, clock, sync
from speed_training import Point

PRECOMPUTE_ROUNDS = 3  # precompute calls (and bare forward passes) timed in turn; medians reported


class PrecomputeProbe:
    """The ``timer`` of one ``precompute`` call: seconds, examples and unpadded teacher tokens per stage ("load",
    "calibrate", "forward", "statistics", ...; see ``lori.methods.lori.teacher.precompute``). Each stage synchronises
    the device before and after, so the times are the work's, not the launch's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.examples: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, stage: str, items):
        sync(self.device)
        t0 = clock()
        yield
        sync(self.device)
        self.seconds[stage] += clock() - t0
        self.examples[stage] += len(items)
        self.tokens[stage] += sum(len(it.input_ids) for it in items)

    def stats_pass(self) -> tuple[float, int, int]:
        """(seconds of teacher forward + statistics, examples, tokens) of the statistics pass."""
        return self.seconds["forward"] + self.seconds["statistics"], self.examples["forward"], self.tokens["forward"]

    def calibration_pass(self) -> tuple[float, int]:
        """(seconds, examples) of the teacher forwards that fit the subspace."""
        return self.seconds["calibrate"], self.examples["calibrate"]


@torch.no_grad()
def bare_forward_seconds(lm, rendered, batch_size: int, pad_id: int, device, repeats: int = 3) -> float:
    """The teacher's bare forward pass (logits only: no hidden states kept, no statistics) over ``rendered`` in the
    batches precompute cuts (``lori.precompute_batch``, padded the same way): the median of ``repeats`` passes after
    one untimed batch. The physical limit of a precompute that runs the teacher once."""
    lm.eval()
    batches = [pad([it.input_ids for it in rendered[s : s + batch_size]], pad_id)
               for s in range(0, len(rendered), batch_size)]  # as teacher_trajectories pads them
    lm(input_ids=batches[0][0].to(device), attention_mask=batches[0][1].to(device))
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        for ids, attn in batches:
            lm(input_ids=ids.to(device), attention_mask=attn.to(device))
        sync(device)
        times.append(clock() - t0)
    return statistics.median(times)


def quiet_precompute(cfg) -> None:
    with contextlib.redirect_stdout(sys.stderr):
        precompute(cfg)


def precompute_rounds(args, pt: Point, device, folder: Path) -> dict:
    """The figures of the report's precompute section: PRECOMPUTE_ROUNDS whole calls on ``pt`` (the first writes
    the cache the LoRi rows train from), each after a bare forward pass; medians, with the first call's manifest."""
    cfg, tok, train = pt.cfg, pt.tok, pt.train
    # Warm-up outside the timing: one teacher forward on the device (CUDA context, kernel selection).
    teacher = pt.lm().eval()
    rendered = [render_teacher(ex, tok, cfg.model.chat_template) for ex in train]
    teacher_trajectories(teacher, rendered[: cfg.lori.precompute_batch], resolve_layers(cfg.lori, args.layers),
                         pt.pad)
    # PRECOMPUTE_ROUNDS rounds, each a bare forward pass then a whole precompute call into a fresh folder (the first
    # is the cache the LoRi rows train from): the medians, taken in turn so that the machine's load hits both alike.
    runs, bares = [], []
    for i in range(PRECOMPUTE_ROUNDS):
        bares.append(bare_forward_seconds(teacher, rendered, cfg.lori.precompute_batch, pt.pad, device, repeats=1))
        probe = PrecomputeProbe(device)
        c = cfg if i == 0 else pt.with_cache(folder / f"cache-round-{i}")
        with PeakMemory(device) as mem, contextlib.redirect_stdout(sys.stderr):
            sync(device)
            t0 = clock()
            precompute(c, timer=probe)
            sync(device)
            total = clock() - t0
        runs.append({"total": total, "load": probe.seconds["load"], "stats": probe.stats_pass(),
                     "calib": probe.calibration_pass(), "mem": mem.bytes})
    del teacher
    manifest = read_manifest(pt.cache_dir)
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    stats_n, tokens = runs[0]["stats"][1:]
    return {"total": med(lambda r: r["total"]), "load": med(lambda r: r["load"]),
            "stats": (med(lambda r: r["stats"][0]), stats_n, tokens),
            "calib": (med(lambda r: r["calib"][0]), runs[0]["calib"][1]), "mem": runs[0]["mem"],
            "n": manifest["n_examples"], "raw": manifest["raw_trajectory_bytes"], "cache": manifest["cache_bytes"],
            "device": str(PartialState().device), "batch": cfg.lori.precompute_batch,
            "bare": statistics.median(bares), "rounds": PRECOMPUTE_ROUNDS}


def cache_by_width(args, device, folder: Path, n_examples: int) -> list[dict]:
    """Per width of ``--cache-widths``: raw fp32 trajectory bytes and cache bytes per example, for float32 and
    bfloat16 caches with and without the per-step statistics, each of ``min(n_examples, 32)`` examples."""
    widths = []
    for w in args.cache_widths:
        wp = Point(folder / f"width-{w}", args, device, hidden=w, latent_steps=args.latent_steps, rank=args.rank,
                   n_examples=min(n_examples, 32), cache_dtype="float32", cache_steps=True)
        row = {"width": w, "rank": min(args.rank, w)}
        for dtype in ("float32", "bfloat16"):
            for steps_on in (True, False):
                c = wp.with_cache(folder / f"width-{w}" / f"cache-{dtype}-{steps_on}", cache_dtype=dtype,
                                  cache_steps=steps_on)
                quiet_precompute(c)
                m = read_manifest(c.lori.cache_dir)
                row[(dtype, steps_on)] = (m["raw_trajectory_bytes"] / m["n_examples"],
                                          m["cache_bytes"] / m["n_examples"])
        widths.append(row)
    return widths
