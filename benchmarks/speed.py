"""Training-step time of CoT-SFT, No-CoT, CODI and LoRi; inference latency / throughput of the LoRi student and the
explicit-CoT teacher; precompute throughput and cache size; peak memory of each; the project's targets. One run.

Everything runs on random-init tiny models built from the project's own pieces (accuracy is not the point): a tiny
teacher checkpoint is saved to a temporary folder with the built-in tokenizer, ``lori.precompute`` writes its
teacher-statistics cache (timed), and every model below starts from that checkpoint, so all methods time the same
network on the same examples. Prints one Markdown report on stdout (library progress goes to stderr), ending with
the targets table. See README.md here.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --digits 3x3 --hidden 64 --layers 2 --steps 5 --problems 8
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
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: keep the library's progress bars quiet

import torch  # noqa: E402

from lori.config import load_config  # noqa: E402
from lori.data.splits import load_split  # noqa: E402
from lori.evaluation.generate import greedy_generate  # noqa: E402
import lori.precompute as precompute_module  # noqa: E402
from lori.methods import METHODS  # noqa: E402
from lori.methods.common import step_norm  # noqa: E402
from lori.data.render import segments  # noqa: E402
from lori.models.build import load_pretrained, tiny_model  # noqa: E402
from lori.methods.lori import render_teacher, resolve_layers  # noqa: E402
from lori.precompute import precompute, teacher_trajectories  # noqa: E402
from lori.subspace.cache import read_manifest  # noqa: E402
from lori.subspace.trajectory import trajectory_statistics  # noqa: E402
from lori.models.setup import builtin_tokenizer  # noqa: E402

# Each method's protocol object (lori.methods.common.Method): render, collate, wrap, loss, prompt, ...
cot_sft, no_cot, codi, lori_method = (METHODS[k] for k in ("cot-sft", "no-cot", "codi", "lori"))

WARMUP = 3  # training steps not timed
# The project's targets (issue 7)
TARGET_TRAIN = 0.7  # LoRi training step time <= 0.7 x CODI's
TARGET_SPEEDUP = 0.8  # inference speedup >= 0.8 x the teacher / student ratio of generated tokens (decoding steps)
TARGET_CACHE = 50.0  # cache >= 50 x smaller than the raw fp32 teacher trajectories it replaces


# ------------------------------------------------------------------------------------------------ measurement glue


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


def time_training(module, loss_fn, batch, norm, device, steps: int, autocast, before_step=None) -> float:
    """Median seconds of one optimizer step (forward + backward + AdamW) over ``steps`` after WARMUP steps.
    ``before_step`` (timed) runs first in every step: the on-the-fly teacher forward."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    module.train()
    times = []
    for _ in range(WARMUP + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            if before_step is not None:
                before_step()
            loss, _ = loss_fn(module, batch, norm)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[WARMUP:])


class OnTheFlyStats:
    """Stands in for the cache (``lori.subspace.cache.TeacherStats``) in ``lori.methods.lori.loss``: ``batch`` returns
    the statistics of a teacher forward run in the same step instead of reading them from the cache."""

    def __init__(self, basis):
        self.basis = basis
        self.current: dict[str, torch.Tensor] | None = None

    def batch(self, index, device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.current.items()}


class PrecomputeProbe:
    """Times the pieces of one ``lori.precompute.precompute`` call by wrapping three of the functions it calls (in
    its module namespace, for the duration of :meth:`attached` only): ``open_model`` (model load),
    ``teacher_trajectories`` (a no-grad teacher forward on one batch) and ``trajectory_statistics`` (the LoRi
    statistics of that batch in the subspace). A forward followed by statistics belongs to the statistics pass over
    the whole training set; a forward without is the calibration pass that fits the subspace. Each wrapped call
    synchronises the device before and after, so the times are the work's, not the launch's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.load_s = 0.0
        self.calls: list[dict] = []  # per teacher forward: seconds, examples, tokens, statistics seconds or None

    @contextlib.contextmanager
    def attached(self):
        pc = precompute_module
        saved = pc.open_model, pc.teacher_trajectories, pc.trajectory_statistics

        def timed(fn):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn()
            sync(self.device)
            return out, time.perf_counter() - t0

        def load(*a, **k):
            out, dt = timed(lambda: saved[0](*a, **k))
            self.load_s += dt
            return out

        def forward(lm, items, *a, **k):
            out, dt = timed(lambda: saved[1](lm, items, *a, **k))
            self.calls.append({"s": dt, "n": len(items), "tokens": sum(len(it.input_ids) for it in items),
                               "stats_s": None})
            return out

        def stats(*a, **k):
            out, dt = timed(lambda: saved[2](*a, **k))
            self.calls[-1]["stats_s"] = dt
            return out

        pc.open_model, pc.teacher_trajectories, pc.trajectory_statistics = load, forward, stats
        try:
            yield self
        finally:
            pc.open_model, pc.teacher_trajectories, pc.trajectory_statistics = saved

    def stats_pass(self) -> tuple[float, int, int]:
        """(seconds of teacher forward + statistics, examples, tokens) of the statistics pass."""
        calls = [c for c in self.calls if c["stats_s"] is not None]
        return (sum(c["s"] + c["stats_s"] for c in calls), sum(c["n"] for c in calls),
                sum(c["tokens"] for c in calls))

    def calibration_pass(self) -> tuple[float, int]:
        """(seconds, examples) of the teacher forwards that fit the subspace."""
        calls = [c for c in self.calls if c["stats_s"] is None]
        return sum(c["s"] for c in calls), sum(c["n"] for c in calls)


def time_generation(lm, prompts: list[list[int]], pad_id: int, max_new_tokens: int, device, gen_kwargs: dict,
                    mode: str) -> tuple[float, float]:
    """Greedy generation forced to ``max_new_tokens`` (eos id -1 is never produced). ``mode`` "latency": mean
    seconds per problem, one at a time; "throughput": problems per second, all prompts in one batch. Returns
    (that figure, decoding steps per problem)."""
    kw = dict(eos_id=-1, pad_id=pad_id, max_new_tokens=max_new_tokens, **gen_kwargs)
    lm.eval()
    greedy_generate(lm, prompts[:1], **kw)  # warm-up
    if mode == "latency":
        times, steps = [], []
        for p in prompts:
            sync(device)
            t0 = time.perf_counter()
            g = greedy_generate(lm, [p], **kw)
            sync(device)
            times.append(time.perf_counter() - t0)
            steps += g.steps
        return statistics.mean(times), statistics.mean(steps)
    sync(device)
    t0 = time.perf_counter()
    g = greedy_generate(lm, prompts, **kw)
    sync(device)
    return len(prompts) / (time.perf_counter() - t0), statistics.mean(g.steps)


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
    ap.add_argument("--problems", type=int, default=64,
                    help="inference: problems timed one by one (latency) and as one batch (throughput)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training autocast; auto = bf16 on a CUDA device that supports it (as lori train does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    if bf16 and device.type != "cuda":
        ap.error("--precision bf16 is only used on CUDA (lori train autocasts on GPUs only)")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    n_examples = max(args.batch, args.problems)

    with tempfile.TemporaryDirectory(prefix="lori-bench-") as tmp:
        teacher_dir, cache_dir = Path(tmp) / "teacher", Path(tmp) / "cache"
        cfg = load_config(None, [
            "method=lori", f"model.arch={args.arch}", f"model.hidden_size={args.hidden}",
            f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
            f"model.intermediate_size={4 * args.hidden}", f"data.digits=[{args.digits[0]},{args.digits[1]}]",
            f"data.train_size={n_examples}", "data.valid_size=1", "data.test_size=1", f"data.seed={args.seed}",
            f"lori.teacher={teacher_dir}", f"lori.cache_dir={cache_dir}", f"lori.latent_steps={args.latent_steps}",
            f"lori.rank={min(args.rank, args.hidden)}", f"lori.calib_size={n_examples}",
            f"codi.latent_steps={args.latent_steps}",
        ])
        train = load_split(cfg.data, "train")
        tok = builtin_tokenizer(train)
        torch.manual_seed(args.seed)
        teacher = tiny_model(cfg.model, tok, max_positions=cfg.data.max_length)
        teacher.save_pretrained(teacher_dir)
        tok.save_pretrained(teacher_dir)
        n_params = sum(p.numel() for p in teacher.parameters())

        # ------------------------------------------------------------------------------------------ precompute
        # lori.precompute runs on accelerate's device; pin it to --device (PartialState is a process-wide singleton
        # that precompute's own PartialState() then reuses).
        from accelerate import PartialState

        PartialState(cpu=device.type == "cpu")
        # Warm-up outside the timing: one teacher forward on the device (CUDA context, kernel selection).
        teacher.to(device).eval()
        warm = [render_teacher(ex, tok, cfg.model.chat_template) for ex in train[: cfg.lori.precompute_batch]]
        teacher_trajectories(teacher, warm, resolve_layers(cfg.lori, args.layers), tok.pad_token_id)
        del teacher, warm
        probe = PrecomputeProbe(device)
        with PeakMemory(device) as mem, probe.attached(), contextlib.redirect_stdout(sys.stderr):
            sync(device)
            t0 = time.perf_counter()
            precompute(cfg)
            sync(device)
            total = time.perf_counter() - t0
        manifest = read_manifest(cache_dir)
        pre = {"total": total, "load": probe.load_s, "stats": probe.stats_pass(), "calib": probe.calibration_pass(),
               "mem": mem.bytes, "n": manifest["n_examples"], "raw": manifest["raw_trajectory_bytes"],
               "cache": manifest["cache_bytes"], "device": str(PartialState().device),
               "batch": cfg.lori.precompute_batch}
        _, tok = load_pretrained(teacher_dir)  # the tokenizer as every checkpoint user sees it
        pad = tok.pad_token_id

        def lm():
            return load_pretrained(teacher_dir, cfg.model.dtype)[0].to(device)

        def student(method=lori_method):
            torch.manual_seed(args.seed)  # same projector init in every measurement
            s = method.wrap(lm(), tok, cfg)
            state = method.setup_training(s, cfg, train, device)
            return s.to(device), state

        # ---------------------------------------------------------------------------------------- training
        examples = train[: args.batch]
        stage = 1  # curriculum.stages = 0: stage 1 is the final rendering (K thoughts, no language steps)
        batches, norms, widths = {}, {}, {}
        for key, method in (("cot", cot_sft), ("nocot", no_cot), ("codi", codi), ("lori", lori_method)):
            items = [method.render(ex, tok, cfg, stage) | {"index": i} for i, ex in enumerate(examples)]
            batch = method.collate(items, pad)
            norms[key] = step_norm(items, list(range(len(items))))  # CODI: also counts its teacher tokens
            batches[key] = to_device(batch, device)
            widths[key] = (batch["input_ids"].shape[1] if "input_ids" in batch else
                           batch["prompt_ids"].shape[1] + args.latent_steps + batch["suffix_ids"].shape[1])
            if "teacher_input_ids" in batch:  # CODI: the latent student's positions + the teacher pass's
                widths[key] = f"{widths[key]} + {batch['teacher_input_ids'].shape[1]}"

        train_rows = {}
        for key, label, method in (("cot", "CoT-SFT (teacher format, full rationale)", cot_sft),
                                   ("nocot", "No-CoT", no_cot)):
            with PeakMemory(device) as mem:
                model = lm()
                t = time_training(model, method.loss, batches[key], norms[key], device, args.steps, autocast)
                del model
            train_rows[key] = (label, widths[key], t, mem.bytes)

        with PeakMemory(device) as mem:
            model, state = student(codi)
            t = time_training(model, lambda m, b, n: codi.loss(m, b, n, state), batches["codi"], norms["codi"],
                              device, args.steps, autocast)
            del model
        train_rows["codi"] = (f"CODI, K={args.latent_steps} (teacher pass + latent student + distillation)",
                              widths["codi"], t, mem.bytes)

        with PeakMemory(device) as mem:
            model, state = student()
            t = time_training(model, lambda m, b, n: lori_method.loss(m, b, n, state), batches["lori"],
                              norms["lori"], device, args.steps, autocast)
            del model
        train_rows["lori"] = (f"LoRi, K={args.latent_steps} (precomputed cache)", widths["lori"], t, mem.bytes)

        with PeakMemory(device) as mem:
            model, state = student()
            frozen = lm().eval().requires_grad_(False)
            basis = state.basis
            fresh = OnTheFlyStats(type(basis).from_dict({k: v.to(device) for k, v in basis.to_dict().items()}))
            state.stats = fresh
            rendered = [render_teacher(ex, tok, cfg.model.chat_template) for ex in examples]

            def teacher_forward():
                with torch.no_grad():
                    h, mask, anchor = teacher_trajectories(frozen, rendered, state.layers, pad)
                    mu, C, a = trajectory_statistics(fresh.basis, h, mask, anchor, cfg.lori.centred)
                fresh.current = {"mu": mu.float(), "cov": C.float(), "anchor": a.float(), "valid": mask.any(-1)}

            t = time_training(model, lambda m, b, n: lori_method.loss(m, b, n, state), batches["lori"],
                              norms["lori"], device, args.steps, autocast, before_step=teacher_forward)
            del model, frozen
        train_rows["fly"] = (f"LoRi, K={args.latent_steps} (teacher run on the fly)", widths["lori"], t, mem.bytes)

        # --------------------------------------------------------------------------------------- inference
        probs = train[: args.problems]
        segs = [segments(ex, tok, cfg.model.chat_template) for ex in probs]
        teacher_new = max(len(s.rationale) + len(s.answer) for s in segs)
        student_new = max(len(s.answer) for s in segs)
        infer = {}
        for key in ("teacher", "student"):
            row = {}
            for mode in ("latency", "throughput"):
                with PeakMemory(device) as mem:
                    if key == "teacher":
                        model, kw, new = lm(), {}, teacher_new
                        prompts = [cot_sft.prompt(ex, tok, cfg) for ex in probs]
                    else:
                        s, _ = student()
                        model, kw, new = s.lm, lori_method.generation_kwargs(s, tok), student_new
                        prompts = [lori_method.prompt(ex, tok, cfg) for ex in probs]
                    value, steps = time_generation(model, prompts, pad, new, device, kw, mode)
                    del model, kw
                    if key == "student":
                        del s
                row[mode], row[mode + "_mem"], row["steps"] = value, mem.bytes, steps
            infer[key] = row

    report = render_report(args, device, bf16, n_params, train_rows, infer, pre, cfg)
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return report


# -------------------------------------------------------------------------------------------------------- report


def mib(b: float) -> str:
    return "n/a" if b != b else f"{b / 2**20:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def render_report(args, device, bf16, n_params, train_rows, infer, pre, cfg) -> str:
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    K = args.latent_steps
    lines = [
        "## LoRi speed benchmark",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu_model()} ({os.cpu_count()} logical cores) |",
        f"| torch | {torch.__version__}; {torch.get_num_threads()} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}) |",
        f"| device | {dev}; training {'bf16 autocast' if bf16 else 'fp32'}, inference and precompute "
        f"{cfg.model.dtype} |",
        f"| model | random-init {args.arch}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"{n_params / 1e6:.2f} M parameters |",
        f"| setup | {args.digits[0]}x{args.digits[1]} multiplication; batch {args.batch}; {args.steps} timed steps "
        f"(median, after {WARMUP} warm-up); K = {K} for LoRi and CODI (projectors: LoRi {cfg.lori.projector}, "
        f"CODI {cfg.codi.projector}); rank {min(args.rank, args.hidden)}; {args.problems} inference problems; "
        f"{pre['n']} precomputed examples |",
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
        f"(precomputing saves {100 * (1 - lori_t / fly_t):.0f}% of the step)",
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
    lines += [
        "",
        f"| teacher / student | value | target (>= {TARGET_SPEEDUP} x step ratio) |",
        "|---|---:|---|",
        f"| decoding-step ratio | {ratio:.2f} | |",
        f"| latency speedup (batch 1) | {lat:.2f} | >= {target:.2f}: {verdict(lat >= target)} |",
        f"| throughput speedup (batch {args.problems}) | {thr:.2f} | >= {target:.2f}: {verdict(thr >= target)} |",
        "",
    ]

    n = pre["n"]
    stats_s, stats_n, tokens = pre["stats"]
    calib_s, calib_n = pre["calib"]
    rest = pre["total"] - pre["load"]
    per = lambda count, sec: f"{count / sec:,.0f}" if sec > 0 else "n/a"  # noqa: E731
    cache_ratio = pre["raw"] / max(pre["cache"], 1)
    lines += [
        f"### Precompute (`lori precompute`, {n} examples, {tokens / max(stats_n, 1):.1f} teacher tokens / example, "
        f"batches of {pre['batch']}, on {pre['device']})",
        "",
        "| part of the one precompute call | seconds | examples/s | tokens/s |",
        "|---|---:|---:|---:|",
        f"| teacher pass + statistics (every example: no-grad teacher forward, then mean / covariance / anchor in the "
        f"subspace) | {stats_s:.3f} | {per(stats_n, stats_s)} | {per(tokens, stats_s)} |",
        f"| calibration pass (teacher forwards on {calib_n} examples that fit the subspace) | {calib_s:.3f} | "
        f"{per(calib_n, calib_s)} | |",
        f"| whole call without the model load (the two passes, basis fit, hashing, rendering, writing) | {rest:.3f} | "
        f"{per(n, rest)} | {per(tokens, rest)} |",
        f"| whole call (+ teacher load {pre['load']:.3f} s) | {pre['total']:.3f} | {per(n, pre['total'])} | "
        f"{per(tokens, pre['total'])} |",
        "",
        f"Peak memory of the whole call: {mib(pre['mem'])} MiB.",
        "",
        "| per example | bytes |",
        "|---|---:|",
        f"| raw fp32 teacher trajectories it replaces (rationale positions + anchor, every layer) | "
        f"{pre['raw'] / n:,.0f} |",
        f"| cache (statistics shards; the shared basis file is a one-off, not counted) | {pre['cache'] / n:,.0f} |",
        f"| raw / cache | **{cache_ratio:.1f}x** "
        f"(target >= {TARGET_CACHE:.0f}x: {verdict(cache_ratio >= TARGET_CACHE)}) |",
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
        f"| cache >= {TARGET_CACHE:.0f} x smaller per example than raw fp32 trajectories | {cache_ratio:.1f} x | "
        f"{verdict(cache_ratio >= TARGET_CACHE)} |",
        f"| precompute throughput (teacher pass + statistics; no target, reported) | "
        f"{per(stats_n, stats_s)} ex/s, {per(tokens, stats_s)} tok/s | |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
