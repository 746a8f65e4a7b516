"""Training-step time of CoT-SFT, No-CoT, CODI and LoRi; inference latency / throughput of the LoRi student and the
explicit-CoT teacher, and what one latent step costs against one decoded token; precompute throughput against the
teacher's bare forward pass; cache size per dtype and width; peak memory of each; the project's targets; and, with
--growth, how a LoRi step's time and memory grow with K, the rank and the width beside CoT-SFT and CODI. One run.

Random-init tiny models from the project's own pieces (accuracy is not the point), all loaded from one saved
teacher checkpoint whose cache ``lori precompute`` writes (timed). Prints one Markdown report on stdout (library
progress goes to stderr). The parts: speed_common (clock, memory, medians), speed_training, speed_inference,
speed_precompute, speed_report, speed_growth. See README.md here.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --digits 3x3 --hidden 64 --layers 2 --steps 5 --problems 8
    OMP_NUM_THREADS=1 python benchmarks/speed.py --growth-only      # just the growth sweep
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: keep the library's progress bars quiet

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402

from speed_common import WARMUP, Clock  # noqa: E402
from speed_growth import growth_sweep  # noqa: E402
from speed_inference import inference  # noqa: E402
from speed_precompute import cache_by_width, precompute_rounds  # noqa: E402
from speed_report import machine_lines, render_report  # noqa: E402
from speed_training import Point  # noqa: E402


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
    pre = precompute_rounds(args, pt, device, folder)  # the first round writes the cache the LoRi rows train from
    labels = {"cot": "CoT-SFT (teacher format, full rationale)", "nocot": "No-CoT",
              "codi": f"CODI, K={args.latent_steps} (teacher pass + latent student + distillation)",
              "lori": f"LoRi, K={args.latent_steps} (precomputed cache)",
              "fly": f"LoRi, K={args.latent_steps} (teacher run on the fly)"}
    times, terms = pt.step_times(list(labels), args.batch, args.steps, autocast, terms=True)
    train_rows = {key: (label, times[key][2], times[key][0], times[key][1]) for key, label in labels.items()}
    infer, per_step = inference(args, pt, device)
    widths = cache_by_width(args, device, folder, n_examples)
    return render_report(args, device, pt.n_params, train_rows, terms, infer, per_step, pre, widths, pt.cfg)


if __name__ == "__main__":
    main()
