"""Training-step time of CoT-SFT, No-CoT, CODI and LoRi; inference latency / throughput of the LoRi student and the
explicit-CoT teacher, and what one latent step costs against one decoded token; precompute throughput against the
teacher's bare forward pass; cache size per dtype and width; peak memory of each; the project's targets; and, with
--growth, how a LoRi step's time and memory grow with K, the rank and the width beside CoT-SFT and CODI. One run.

Everything runs on random-init tiny models built from the project's own pieces (accuracy is not the point): a tiny
teacher checkpoint is saved to a temporary folder with the built-in tokenizer, ``lori.methods.lori.teacher`` writes its
teacher-statistics cache (timed), and every model below starts from that checkpoint, so all methods time the same
network on the same examples. Prints one Markdown report on stdout (library progress goes to stderr), ending with
the targets table (and the growth sweep after it). See README.md here.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --digits 3x3 --hidden 64 --layers 2 --steps 5 --problems 8
    OMP_NUM_THREADS=1 python benchmarks/speed.py --growth-only      # just the growth sweep
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: keep the library's progress bars quiet

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402

from lori.config import load_config  # noqa: E402
from lori.data.splits import load_split  # noqa: E402
from lori.evaluation.generate import greedy_generate  # noqa: E402
import lori.methods.lori.teacher as precompute_module  # noqa: E402
from lori.methods import METHODS  # noqa: E402
from lori.methods.common import step_norm  # noqa: E402
from lori.data.render import segments  # noqa: E402
from lori.models.build import load_pretrained, tiny_model  # noqa: E402
from lori.methods.lori.teacher import render_teacher
from lori.methods.lori.method import resolve_layers  # noqa: E402
from lori.methods.lori.teacher import precompute, teacher_trajectories  # noqa: E402
from lori.methods.lori.cache import read_manifest  # noqa: E402
from lori.subspace.trajectory import trajectory_statistics  # noqa: E402
from lori.losses import anchor_loss, rationale_loss  # noqa: E402
from lori.models.loading import builtin_tokenizer  # noqa: E402
from lori.utils import pad  # noqa: E402

# Each method's protocol object (lori.methods.common.Method): render, collate, wrap, loss, prompt, ...
cot_sft, no_cot, codi, lori_method = (METHODS[k] for k in ("cot-sft", "no-cot", "codi", "lori"))

WARMUP = 3  # training steps not timed
MEMORY_STEPS = 2  # steps of a method run alone for its peak memory (the second holds AdamW's state and activations)
# The project's targets (issues 7 and 17)
TARGET_TRAIN = 0.7  # LoRi training step time <= 0.7 x CODI's
TARGET_SPEEDUP = 0.9  # inference speedup >= 0.9 x the teacher / student ratio of generated tokens (decoding steps)
TARGET_CACHE = 50.0  # cache >= 50 x smaller than the raw fp32 teacher trajectories it replaces
TARGET_PRECOMPUTE = 0.8  # precompute's statistics pass >= 0.8 x the throughput of the teacher's bare forward pass
PRECOMPUTE_ROUNDS = 3  # precompute calls (and bare forward passes) timed in turn; medians reported
INFER_ROUNDS = 3  # batched generations per model and length, in turn; medians reported


# ------------------------------------------------------------------------------------------------ measurement glue


class Clock:
    """What every timing in the report reads: wall time (``time.perf_counter``), or on a CPU this process's CPU time
    (``time.process_time``: the time the work takes on a core of its own, whatever else the machine runs; with one
    thread it is the latency an unshared core would show). ``--clock auto``: CPU time on a CPU device with one
    torch thread, wall time otherwise (a GPU's work is not CPU time)."""

    fn = staticmethod(time.perf_counter)
    name = "wall time (time.perf_counter)"


def clock() -> float:
    return Clock.fn()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Hand freed heap pages back to the OS (glibc), then reset the kernel's resident-set high-water mark to the
    current RSS (Linux >= 4.0), if allowed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory a block needed above what was in use when it started (each block builds its own models).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the CUDA context or the allocator's cache).
    CPU: the process peak RSS. Where ``/proc/self/clear_refs`` is writable the peak is reset per block and read from
    ``VmHWM``; otherwise it is the delta of ``resource.getrusage().ru_maxrss``, which never goes down, so a block that
    needs less than an earlier one reads ~0. RSS counts whole pages and whatever the allocator keeps: coarse.
    """

    how = ""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = float("nan")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            PeakMemory.how = "CUDA max_memory_allocated above the allocation at the start"
        elif _reset_rss_peak() and _proc_status("VmHWM") is not None:
            self.mode, self.base = "hwm", _proc_status("VmRSS")
            PeakMemory.how = "CPU peak RSS (VmHWM, reset per measurement) above the RSS at the start; coarse"
        else:
            self.mode, self.base = "ru", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            PeakMemory.how = ("CPU max-RSS delta (getrusage; monotonic, so later smaller measurements read ~0); "
                              "very coarse")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.mode == "hwm":
            self.bytes = _proc_status("VmHWM") - self.base
        else:
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        return False


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], device, reps: int,
                       warmup: int = WARMUP) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``reps`` timed calls after ``warmup`` untimed ones, the calls taken in
    turn (one of each, then again), so that a machine whose load changes during the run slows every measurement
    alike: the ratios between them hold on a shared machine even when the absolute times do not."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for k, fn in fns.items():
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            if i >= warmup:
                times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training_step(module, loss_fn, batch, norm, autocast, before_step=None) -> Callable[[], None]:
    """One optimizer step (forward + backward + AdamW) of ``module`` on ``batch``, as a closure with its own AdamW.
    ``before_step`` runs first in every step (timed with it): the on-the-fly teacher forward."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    module.train()

    def step():
        with autocast():
            if before_step is not None:
                before_step()
            loss, _ = loss_fn(module, batch, norm)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class OnTheFlyStats:
    """Stands in for the cache (``lori.methods.lori.cache.TeacherStats``) in ``lori.methods.lori.loss``: ``batch`` returns
    the statistics of a teacher forward run in the same step instead of reading them from the cache."""

    def __init__(self, basis):
        self.basis = basis
        self.current: dict[str, torch.Tensor] | None = None

    def batch(self, index, device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.current.items()}


class PrecomputeProbe:
    """Times the pieces of one ``lori.methods.lori.teacher.precompute`` call by wrapping five of the functions it calls (in
    its module namespace, for the duration of :meth:`attached` only): ``open_model`` (model load),
    ``teacher_trajectories`` (a no-grad teacher forward on one batch, with every layer's hidden states) and
    ``trajectory_statistics``, ``prefix_means``, ``step_states`` (the LoRi statistics of that batch in the subspace).
    A forward followed by statistics belongs to the statistics pass over the whole training set; a forward without
    is the calibration pass that fits the subspace. Each wrapped call
    synchronises the device before and after, so the times are the work's, not the launch's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.load_s = 0.0
        self.calls: list[dict] = []  # per teacher forward: seconds, examples, tokens, statistics seconds or None

    @contextlib.contextmanager
    def attached(self):
        pc = precompute_module
        saved = pc.open_model, pc.teacher_trajectories, pc.trajectory_statistics, pc.prefix_means, pc.step_states

        def timed(fn):
            sync(self.device)
            t0 = clock()
            out = fn()
            sync(self.device)
            return out, clock() - t0

        def load(*a, **k):
            out, dt = timed(lambda: saved[0](*a, **k))
            self.load_s += dt
            return out

        def forward(lm, items, *a, **k):
            out, dt = timed(lambda: saved[1](lm, items, *a, **k))
            self.calls.append({"s": dt, "n": len(items), "tokens": sum(len(it.input_ids) for it in items),
                               "stats_s": None})
            return out

        def stats_part(fn):
            def wrapped(*a, **k):
                out, dt = timed(lambda: fn(*a, **k))
                self.calls[-1]["stats_s"] = (self.calls[-1]["stats_s"] or 0.0) + dt
                return out
            return wrapped

        pc.open_model, pc.teacher_trajectories = load, forward
        pc.trajectory_statistics, pc.prefix_means, pc.step_states = (stats_part(f) for f in saved[2:])
        try:
            yield self
        finally:
            (pc.open_model, pc.teacher_trajectories, pc.trajectory_statistics, pc.prefix_means,
             pc.step_states) = saved

    def stats_pass(self) -> tuple[float, int, int]:
        """(seconds of teacher forward + statistics, examples, tokens) of the statistics pass."""
        calls = [c for c in self.calls if c["stats_s"] is not None]
        return (sum(c["s"] + c["stats_s"] for c in calls), sum(c["n"] for c in calls),
                sum(c["tokens"] for c in calls))

    def calibration_pass(self) -> tuple[float, int]:
        """(seconds, examples) of the teacher forwards that fit the subspace."""
        calls = [c for c in self.calls if c["stats_s"] is None]
        return sum(c["s"] for c in calls), sum(c["n"] for c in calls)


STEP_GAP = 16  # decoding steps between the short and the long generation whose difference prices one step


def generation_times(gens: dict[str, tuple], pad_id: int, device) -> tuple[dict[str, float], dict[str, float]]:
    """Greedy generation (KV cache) forced to a length (``eos_id=-1`` is never produced) for each entry
    ``name: (lm, prompts, generation kwargs, max_new_tokens)``. Returns (batch 1: mean seconds per problem, each
    problem run by every entry in turn; batched: median seconds of INFER_ROUNDS generations of all prompts in one
    batch, the entries in turn), both after one untimed generation per entry.

    The per-step prices come from pairs of entries STEP_GAP steps apart, so that the prompt's prefill and the fixed
    overhead cancel: a decoded token is (T(1 + G tokens) - T(1 token)) / G for the explicit model; a latent step
    (projector + one forward that also returns the hidden states) is (T(1 + G thoughts) - T(1 thought)) / G for the
    latent student, which then decodes <eot> and one token; both sit at the same positions after the prompt."""

    def run(name: str, prompts: list[list[int]]) -> None:
        lm, _, kw, new = gens[name]
        greedy_generate(lm, prompts, eos_id=-1, pad_id=pad_id, max_new_tokens=new, **kw)

    for name, (_, prompts, _, _) in gens.items():
        run(name, prompts[:1])  # warm-up
    n = len(next(iter(gens.values()))[1])
    one: dict[str, list[float]] = {k: [] for k in gens}
    for i in range(n):
        for name, (_, prompts, _, _) in gens.items():
            sync(device)
            t0 = clock()
            run(name, [prompts[i]])
            sync(device)
            one[name].append(clock() - t0)
    batched = interleaved_medians({name: (lambda name=name: run(name, gens[name][1])) for name in gens}, device,
                                  INFER_ROUNDS, warmup=1)
    return {k: statistics.mean(v) for k, v in one.items()}, batched


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


def loss_term_fns(state, batch: int, K: int, device) -> dict[str, Callable[[], None]]:
    """LoRi's loss terms alone, forward + backward, on student states of a step's shapes (``h [B, L, K, d]``, the
    anchor ``[B, L, d]``; random, as the values do not change the cost), with the cache rows of ``batch`` examples,
    as four closures to time (:func:`interleaved_medians`, beside the LoRi step they are a share of):

    - *cache read*: ``state.stats.batch`` (index the rows, unpack the covariance triangles, move to the device);
    - *projection*: ``U_l^T h`` at the K states and the anchor (O(B L K d r));
    - *+ first order*: the masked mean, the mean term of L_rat and L_anc (O(B L K r));
    - *full*: ``trajectory_statistics`` (mean and covariance, O(B L K r^2)) with the whole ``rationale_loss`` and
      ``anchor_loss`` (covariance term O(B L r^2)) as ``lori.methods.lori.loss`` calls them.

    :func:`term_split` turns their medians into the pieces."""
    lc, basis = state.cfg, state.basis
    L, d = len(state.layers), basis.dim
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(batch, L, K, d, generator=g).to(device)
    a0 = torch.randn(batch, L, d, generator=g).to(device)
    mask = torch.ones(batch, K, dtype=torch.bool, device=device)
    index = torch.arange(batch) % state.stats.mu.shape[0]
    t = state.stats.batch(index, device)

    def read():
        state.stats.batch(index, device)

    def projection():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        (basis.project(h).sum() + basis.project_anchor(a).sum()).backward()

    def first_order():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        z, za = basis.project(h), basis.project_anchor(a)
        mu = z.mean(2)  # every position valid here, as in the final stage
        rat, _ = rationale_loss(mu, None, t["mu"], None, first_order=True, second_order=False, normalize=lc.normalize,
                                centred=lc.centred, example_mask=t["valid"], scale=state.scale)
        anc = anchor_loss(za, t["anchor"], normalize=lc.normalize, example_mask=t["valid"], scale=state.anchor_scale)
        (rat + anc).backward()

    def full():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        mu, C, za = trajectory_statistics(basis, h, mask, a, lc.centred)
        rat, _ = rationale_loss(mu, C, t["mu"], t["cov"], lam=lc.lam, normalize=lc.normalize, centred=lc.centred,
                                example_mask=t["valid"], scale=state.scale)
        anc = anchor_loss(za, t["anchor"], normalize=lc.normalize, example_mask=t["valid"], scale=state.anchor_scale)
        (rat + anc).backward()

    return {"terms:read": read, "terms:projection": projection, "terms:first": first_order, "terms:full": full}


def term_split(med: dict[str, float]) -> dict[str, float]:
    """``{"read", "projection", "moments", "covariance", "total"}`` from the medians of :func:`loss_term_fns`:
    moments = first order - projection, covariance = full - first order, total = read + full (differences of
    medians: a piece of a few microseconds can read slightly off)."""
    r, p, f1, f = (med[f"terms:{k}"] for k in ("read", "projection", "first", "full"))
    return {"read": r, "projection": p, "moments": f1 - p, "covariance": f - f1, "total": r + f}


# ------------------------------------------------------------------------------------------------------- the run


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_digits(text: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--digits must look like 4x4, got {text!r}") from None
    return n, m


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class Point:
    """One benchmark shape: a random-init tiny teacher of ``hidden`` width saved in ``folder/teacher``, the config
    of LoRi (K, rank, cache options) and CODI (same K) on it, its training examples and tokenizer. Every model of
    the point loads from that checkpoint."""

    def __init__(self, folder: Path, args, device, *, hidden: int, latent_steps: int, rank: int, n_examples: int,
                 cache_dtype: str, cache_steps: bool):
        self.teacher_dir, self.cache_dir = folder / "teacher", folder / "cache"
        self.device, self.K, self.hidden = device, latent_steps, hidden
        self.cfg = load_config(None, [
            "method=lori", f"model.arch={args.arch}", f"model.hidden_size={hidden}",
            f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
            f"model.intermediate_size={4 * hidden}", f"data.digits=[{args.digits[0]},{args.digits[1]}]",
            f"data.train_size={n_examples}", "data.valid_size=1", "data.test_size=1", f"data.seed={args.seed}",
            f"lori.teacher={self.teacher_dir}", f"lori.cache_dir={self.cache_dir}", f"lori.latent_steps={latent_steps}",
            f"lori.rank={min(rank, hidden)}", f"lori.calib_size={n_examples}", f"lori.cache_dtype={cache_dtype}",
            f"lori.cache_steps={str(cache_steps).lower()}", f"codi.latent_steps={latent_steps}",
        ])
        self.seed = args.seed
        self.train = load_split(self.cfg.data, "train")
        tok = builtin_tokenizer(self.train)
        torch.manual_seed(args.seed)
        teacher = tiny_model(self.cfg.model, tok, max_positions=self.cfg.data.max_length)
        teacher.save_pretrained(self.teacher_dir)
        tok.save_pretrained(self.teacher_dir)
        self.n_params = sum(p.numel() for p in teacher.parameters())
        del teacher
        _, self.tok = load_pretrained(self.teacher_dir)  # the tokenizer as every checkpoint user sees it
        self.pad = self.tok.pad_token_id

    def with_cache(self, folder: Path, **lori_fields):
        """This point's config with another cache folder and lori.* options (same teacher, data and K)."""
        import dataclasses

        return dataclasses.replace(self.cfg, lori=dataclasses.replace(self.cfg.lori, cache_dir=str(folder),
                                                                      **lori_fields))

    def lm(self):
        return load_pretrained(self.teacher_dir, self.cfg.model.dtype)[0].to(self.device)

    def student(self, method=lori_method):
        torch.manual_seed(self.seed)  # same projector init in every measurement
        s = method.wrap(self.lm(), self.tok, self.cfg)
        state = method.setup_training(s, self.cfg, self.train, self.device)
        return s.to(self.device), state

    def batch(self, key: str, n: int):
        """(batch on the device, Norm, positions per example) of the first ``n`` training examples for a method."""
        method = {"cot": cot_sft, "nocot": no_cot, "codi": codi, "lori": lori_method}[key]
        stage = 1  # curriculum.stages = 0: stage 1 is the final rendering (K thoughts, no language steps)
        items = [method.render(ex, self.tok, self.cfg, stage) | {"index": i} for i, ex in enumerate(self.train[:n])]
        batch = method.collate(items, self.pad)
        width = (batch["input_ids"].shape[1] if "input_ids" in batch else
                 batch["prompt_ids"].shape[1] + self.K + batch["suffix_ids"].shape[1])
        if "teacher_input_ids" in batch:  # CODI: the latent student's positions + the teacher pass's
            width = f"{width} + {batch['teacher_input_ids'].shape[1]}"
        return to_device(batch, self.device), step_norm(items, list(range(len(items)))), width

    def step_fn(self, key: str, n: int, autocast) -> tuple[Callable[[], None], object]:
        """(one training step of a method on the first ``n`` examples, positions per example); the closure holds the
        model. ``key``: cot, nocot, codi, lori (precomputed cache) or fly (LoRi with the teacher run in the step)."""
        b, norm, width = self.batch("lori" if key == "fly" else key, n)
        if key in ("cot", "nocot"):
            return training_step(self.lm(), (cot_sft if key == "cot" else no_cot).loss, b, norm, autocast), width
        if key == "codi":
            model, state = self.student(codi)
            return training_step(model, lambda m, bb, nn: codi.loss(m, bb, nn, state), b, norm, autocast), width
        model, state = self.student()
        before = self._on_the_fly(state, n) if key == "fly" else None
        return training_step(model, lambda m, bb, nn: lori_method.loss(m, bb, nn, state), b, norm, autocast,
                             before), width

    def step_times(self, keys: list[str], n: int, steps: int, autocast, terms: bool = False):
        """Median step seconds of each method in ``keys``, interleaved (with LoRi's loss terms alone if ``terms``),
        then each method's peak memory over MEMORY_STEPS steps on its own (built alone). Returns ({key: (seconds, bytes, positions)},
        the term split or None)."""
        fns, widths = {}, {}
        for k in keys:
            fns[k], widths[k] = self.step_fn(k, n, autocast)
        if terms:
            _, state = self.student()
            fns |= loss_term_fns(state, n, self.K, self.device)
        med = interleaved_medians(fns, self.device, steps)
        del fns
        out = {}
        for k in keys:
            with PeakMemory(self.device) as mem:
                fn, _ = self.step_fn(k, n, autocast)
                for _ in range(MEMORY_STEPS):
                    fn()
                del fn
            out[k] = (med[k], mem.bytes, widths[k])
        return out, term_split(med) if terms else None

    def _on_the_fly(self, state, n: int):
        """Replace the cache in ``state`` with a teacher forward run in the same step; return that forward."""
        frozen = self.lm().eval().requires_grad_(False)
        basis = state.basis
        fresh = OnTheFlyStats(type(basis).from_dict({k: v.to(self.device) for k, v in basis.to_dict().items()}))
        state.stats = fresh
        rendered = [render_teacher(ex, self.tok, self.cfg.model.chat_template) for ex in self.train[:n]]

        def teacher_forward():
            with torch.no_grad():
                h, mask, anchor = teacher_trajectories(frozen, rendered, state.layers, self.pad)
                mu, C, a = trajectory_statistics(fresh.basis, h, mask, anchor, self.cfg.lori.centred)
            fresh.current = {"mu": mu.float(), "cov": C.float(), "anchor": a.float(), "valid": mask.any(-1)}

        return teacher_forward


def quiet_precompute(cfg) -> None:
    with contextlib.redirect_stdout(sys.stderr):
        precompute(cfg)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", type=parse_digits, default=(4, 4), help="N x M multiplication (default 4x4)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--arch", choices=["llama", "qwen2", "gpt2"], default="llama")
    ap.add_argument("--batch", type=int, default=64, help="training batch (examples per optimizer step)")
    ap.add_argument("--steps", type=int, default=20, help=f"timed training steps (after {WARMUP} warm-up steps)")
    ap.add_argument("--latent-steps", type=int, default=5,
                    help="K continuous thoughts of the LoRi student and, for a like-for-like step, of CODI")
    ap.add_argument("--rank", type=int, default=16, help="LoRi subspace rank (capped at --hidden)")
    ap.add_argument("--cache-dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                    help="lori.cache_dtype of the cache the LoRi rows train from (default bfloat16)")
    ap.add_argument("--cache-steps", action="store_true",
                    help="lori.cache_steps=true: keep the per-step statistics in that cache (default: left out, as "
                         "the default loss reads none)")
    ap.add_argument("--cache-widths", type=int_list, default=[128, 256, 576],
                    help="widths of the cache-size table (each dtype, with and without per-step statistics)")
    ap.add_argument("--problems", type=int, default=64,
                    help="inference: problems timed one by one (latency) and as one batch (throughput)")
    ap.add_argument("--growth", action="store_true", help="also run the growth sweep (after the targets)")
    ap.add_argument("--growth-only", action="store_true", help="run the growth sweep alone")
    ap.add_argument("--growth-base", type=int_list, default=[4, 16, 128], metavar="K,R,WIDTH",
                    help="the sweep's base point; each list below varies one of the three around it")
    ap.add_argument("--growth-K", type=int_list, default=[2, 4, 8, 16])
    ap.add_argument("--growth-rank", type=int_list, default=[4, 16, 64])
    ap.add_argument("--growth-width", type=int_list, default=[128, 256, 512])
    ap.add_argument("--growth-batch", type=int, default=16, help="training batch of the sweep")
    ap.add_argument("--growth-steps", type=int, default=5, help="timed steps per method and point in the sweep")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training autocast; auto = bf16 on a CUDA device that supports it (as lori train does)")
    ap.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                    help="what the timings read: wall time, or this process's CPU time (auto: CPU time on a CPU "
                         "device with one torch thread, e.g. OMP_NUM_THREADS=1 on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    args = ap.parse_args(argv)
    if len(args.growth_base) != 3:
        ap.error("--growth-base takes three numbers: K,RANK,WIDTH")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    if bf16 and device.type != "cuda":
        ap.error("--precision bf16 is only used on CUDA (lori train autocasts on GPUs only)")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # lori.methods.lori.teacher runs on accelerate's device; pin it to --device (PartialState is a process-wide singleton
    # that precompute's own PartialState() then reuses).
    PartialState(cpu=device.type == "cpu")

    if args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu" and torch.get_num_threads() == 1):
        if device.type == "cuda":
            ap.error("--clock cpu: a GPU's work is not CPU time; use --clock wall")
        Clock.fn, Clock.name = staticmethod(time.process_time), (
            "CPU time of this process (time.process_time): the time on an unshared core, whatever else runs")
    parts = [machine_lines(args, device, bf16)]
    with tempfile.TemporaryDirectory(prefix="lori-bench-") as tmp:
        if not args.growth_only:
            parts.append(main_run(args, device, autocast, Path(tmp) / "main"))
        if args.growth or args.growth_only:
            parts.append(growth_sweep(args, device, autocast, Path(tmp) / "growth"))
    report = "\n".join(parts)
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return report


def main_run(args, device, autocast, folder: Path) -> str:
    n_examples = max(args.batch, args.problems)
    pt = Point(folder, args, device, hidden=args.hidden, latent_steps=args.latent_steps, rank=args.rank,
               n_examples=n_examples, cache_dtype=args.cache_dtype, cache_steps=args.cache_steps)
    cfg, tok, train = pt.cfg, pt.tok, pt.train

    # ---------------------------------------------------------------------------------------------- precompute
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
        with PeakMemory(device) as mem, probe.attached(), contextlib.redirect_stdout(sys.stderr):
            sync(device)
            t0 = clock()
            precompute(c)
            sync(device)
            total = clock() - t0
        runs.append({"total": total, "load": probe.load_s, "stats": probe.stats_pass(),
                     "calib": probe.calibration_pass(), "mem": mem.bytes})
    del teacher
    manifest = read_manifest(pt.cache_dir)
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    stats_n, tokens = runs[0]["stats"][1:]
    pre = {"total": med(lambda r: r["total"]), "load": med(lambda r: r["load"]),
           "stats": (med(lambda r: r["stats"][0]), stats_n, tokens),
           "calib": (med(lambda r: r["calib"][0]), runs[0]["calib"][1]), "mem": runs[0]["mem"],
           "n": manifest["n_examples"], "raw": manifest["raw_trajectory_bytes"], "cache": manifest["cache_bytes"],
           "device": str(PartialState().device), "batch": cfg.lori.precompute_batch,
           "bare": statistics.median(bares), "rounds": PRECOMPUTE_ROUNDS}

    # ------------------------------------------------------------------------------------------------ training
    labels = {"cot": "CoT-SFT (teacher format, full rationale)", "nocot": "No-CoT",
              "codi": f"CODI, K={args.latent_steps} (teacher pass + latent student + distillation)",
              "lori": f"LoRi, K={args.latent_steps} (precomputed cache)",
              "fly": f"LoRi, K={args.latent_steps} (teacher run on the fly)"}
    times, terms = pt.step_times(list(labels), args.batch, args.steps, autocast, terms=True)
    train_rows = {key: (label, times[key][2], times[key][0], times[key][1]) for key, label in labels.items()}

    # ----------------------------------------------------------------------------------------------- inference
    probs = train[: args.problems]
    segs = [segments(ex, tok, cfg.model.chat_template) for ex in probs]
    teacher_new = max(len(s.rationale) + len(s.answer) for s in segs)
    student_new = max(len(s.answer) for s in segs)
    prompts_t = [cot_sft.prompt(ex, tok, cfg) for ex in probs]
    prompts_s = [lori_method.prompt(ex, tok, cfg) for ex in probs]
    infer = {key: {} for key in ("teacher", "student")}
    for key in infer:  # peak memory and decoding steps: each model built and run on its own
        for mode in ("latency", "throughput"):
            with PeakMemory(device) as mem:
                if key == "teacher":
                    model, kw, new, prompts = pt.lm(), {}, teacher_new, prompts_t
                else:
                    s, _ = pt.student()
                    model, kw, new, prompts = s.lm, lori_method.generation_kwargs(s, tok, cfg), student_new, prompts_s
                g = greedy_generate(model.eval(), prompts[:1] if mode == "latency" else prompts, eos_id=-1,
                                    pad_id=pt.pad, max_new_tokens=new, **kw)
                del model, kw
                if key == "student":
                    del s
            infer[key][mode + "_mem"] = mem.bytes
            infer[key]["steps"] = statistics.mean(g.steps)
    # the times: both models loaded once, every generation taken in turn (see generation_times)
    teacher_lm, (student, _) = pt.lm().eval(), pt.student()
    student.lm.eval()
    kw = student.generation_kwargs()
    gens = {"teacher": (teacher_lm, prompts_t, {}, teacher_new), "student": (student.lm, prompts_s, kw, student_new),
            "tok:1": (teacher_lm, prompts_t, {}, 1), f"tok:{1 + STEP_GAP}": (teacher_lm, prompts_t, {}, 1 + STEP_GAP),
            "lat:1": (student.lm, prompts_s, kw | {"latent_steps": 1}, 1),
            f"lat:{1 + STEP_GAP}": (student.lm, prompts_s, kw | {"latent_steps": 1 + STEP_GAP}, 1)}
    one, batched = generation_times(gens, pt.pad, device)
    for key in ("teacher", "student"):
        infer[key]["latency"], infer[key]["throughput"] = one[key], len(probs) / batched[key]
    per_step = {mode: tuple((t[f"{k}:{1 + STEP_GAP}"] - t[f"{k}:1"]) / STEP_GAP for k in ("tok", "lat"))
                for mode, t in (("batch1", one), ("batched", batched))}
    del teacher_lm, student

    # -------------------------------------------------------------------------------------- cache size by width
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

    return render_report(args, device, pt.n_params, train_rows, terms, infer, per_step, pre, widths, cfg)


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


# -------------------------------------------------------------------------------------------------------- report


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
        f"| setup | |",
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


if __name__ == "__main__":
    main()
