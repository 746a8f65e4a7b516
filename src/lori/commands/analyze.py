"""``lori analyze CHECKPOINT [--student CKPT]``: the low-rank structure of reasoning trajectories (lori.analysis)."""

from __future__ import annotations

SINGLE_PROCESS = True
POSITIONAL = "overrides"


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="the teacher: a checkpoint folder or a run folder (newest checkpoint)")
    p.add_argument("overrides", nargs="*", help="data.* / lori.* overrides, e.g. lori.rank=8 lori.layers=[2,4]")
    p.add_argument("--student", help="a latent student (lori, coconut, codi) checkpoint or run folder: subspace "
                                      "overlap and latent probe")
    p.add_argument("--data-split", default="train", choices=["train", "valid", "test"],
                   help="split the problems are sampled from (default: train)")
    p.add_argument("--n", type=int, default=256, help="problems to sample (default: 256)")
    p.add_argument("--out", help="folder for analysis.json, figures and report.md (default: RUN/analysis-SPLIT)")
    p.add_argument("--seed", type=int, default=0, help="seed of the controls (random weights, shuffles, tokens)")
    p.add_argument("--batch-size", type=int, default=32, help="problems per forward pass (default: 32)")
    p.add_argument("--probe-examples", type=int, default=3, help="problems shown in the latent probe (default: 3)")


def run(args) -> None:
    from ..analysis.measure import AnalyzeOptions, analyze

    analyze(args.checkpoint, args.overrides, student=args.student, out=args.out,
            options=AnalyzeOptions(split=args.data_split, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                   probe_examples=args.probe_examples))
