"""The ``lori`` command: a handful of verbs. Bad input exits 2 with a one-line message, never a traceback.

    lori train CONFIG.yaml [key=value ...]       train any method (the method is a config field)
    lori precompute CONFIG.yaml [key=value ...]  teacher statistics for a LoRi student (lori.cache_dir)
    lori eval CHECKPOINT [CHECKPOINT ...] [--out DIR] [key=value ...]
    lori analyze CHECKPOINT [--student CKPT] [--data-split S] [--n N] [--out DIR] [data.*|lori.*=value ...]
    lori prepare multiplication --digits 4x4 --count N --seed S --out FILE [--exclude FILE ...]
    lori prepare chains --steps L --count N --seed S --out FILE [--modulus M --ops +-* --back-ref P ...]
    lori prepare gsm8k-aug --out DIR [--source hub|gsm8k-train] [--gsm8k-train FILE] [--valid FILE]
    lori export RUN --out DIR [--max-shard-size 5GB] [--push-to-hub USER/NAME]
                                                 a self-contained folder to publish: weights, tokenizer, latent
                                                 settings, generation config, model card
    lori lm-eval --model lori --model_args pretrained=DIR --tasks gsm8k --num_fewshot 0 [lm_eval options ...]
                                                 lm-evaluation-harness with the lori model type (pip install
                                                 'lm-eval==0.4.13'): the student's latent loop, lm-eval's scoring
    lori demo --out DIR [--train-teacher]        the built-in end-to-end demo on the CPU (6-step chains)
    lori compare --teacher T.yaml --student S.yaml --methods M1,M2,... --seeds 0,1 --out DIR [key=value ...]
                                                 methods x seeds on one task and budget: mean ± 95% CI over seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LoriError

# Every other lori import is inside the function that needs it: `lori --help` and each command load only their own
# modules (torch, transformers and accelerate load when a command that uses them runs).


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lori", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train a model (method: cot-sft | no-cot | lori | icot-si | coconut | codi | aux-sum)")
    t.add_argument("config", nargs="?", help="YAML preset (see configs/); defaults apply when omitted")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method=no-cot")

    pc = sub.add_parser("precompute", help="run the frozen teacher once; write LoRi teacher statistics (lori.cache_dir)")
    pc.add_argument("config", nargs="?", help="YAML preset of the LoRi student run (lori.teacher, lori.cache_dir)")
    pc.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lori.rank=8")

    e = sub.add_parser("eval", help="evaluate checkpoints: accuracy with 95%% CI, tokens, latency, throughput")
    e.add_argument("checkpoints", nargs="+", help="checkpoint folders or run folders (newest checkpoint), "
                                                  "then optional key=value overrides")
    e.add_argument("--out", help="folder for results.json, results.md and predictions (default: RUN/eval-SPLIT)")

    x = sub.add_parser("export", help="a self-contained, Hub-ready folder of a student: merged weights (sharded "
                                      "above --max-shard-size), tokenizer, latent settings, model card")
    x.add_argument("run", help="a run folder (newest checkpoint) or a checkpoint folder")
    x.add_argument("--out", required=True, help="the export folder (new, empty, or an earlier export)")
    x.add_argument("--max-shard-size", default="5GB",
                   help="weights above this are split into shards with model.safetensors.index.json (default 5GB)")
    x.add_argument("--results", help="results.json whose rows of this checkpoint go into the model card "
                                     "(default: the run's eval-*/results.json)")
    x.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub model repo (USER/NAME; "
                                                         "needs network and `hf auth login`)")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness's command line with the lori model type "
                                                   "(`lori lm-eval --help` is lm_eval's help)")

    a = sub.add_parser("analyze", help="low-rank structure of teacher trajectories, with controls and plots; "
                                       "optionally a latent student's subspace and a vocabulary probe")
    a.add_argument("checkpoint", help="the teacher: a checkpoint folder or a run folder (newest checkpoint)")
    a.add_argument("overrides", nargs="*", help="data.* / lori.* overrides, e.g. lori.rank=8 lori.layers=[2,4]")
    a.add_argument("--student", help="a latent student (lori, coconut, codi) checkpoint or run folder: subspace "
                                      "overlap and latent probe")
    a.add_argument("--data-split", default="train", choices=["train", "valid", "test"],
                   help="split the problems are sampled from (default: train)")
    a.add_argument("--n", type=int, default=256, help="problems to sample (default: 256)")
    a.add_argument("--out", help="folder for analysis.json, figures and report.md (default: RUN/analysis-SPLIT)")
    a.add_argument("--seed", type=int, default=0, help="seed of the controls (random weights, shuffles, tokens)")
    a.add_argument("--batch-size", type=int, default=32, help="problems per forward pass (default: 32)")
    a.add_argument("--probe-examples", type=int, default=3, help="problems shown in the latent probe (default: 3)")

    pr = sub.add_parser("prepare", help="write a data set in the iCoT format")
    pr_sub = pr.add_subparsers(dest="what", required=True)
    m = pr_sub.add_parser("multiplication", help="generate N x M digit multiplication problems")
    m.add_argument("--digits", default="4x4", help="NxM, e.g. 4x4")
    m.add_argument("--count", type=int, required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--exclude", action="append", default=[], help="iCoT file whose pairs must not be emitted")
    m.add_argument("--out", required=True)
    ch = pr_sub.add_parser("chains", help="generate L-step arithmetic over named variables mod m (the reasoning-"
                                          "depth task, lori.data.chains)")
    ch.add_argument("--steps", type=int, default=4, help="L, the number of steps (default 4)")
    ch.add_argument("--modulus", type=int, default=10)
    ch.add_argument("--ops", default="+-*", help="a subset of +-* (default +-*)")
    ch.add_argument("--back-ref", type=float, default=0.0, help="share of +/- steps using an earlier variable")
    ch.add_argument("--rationale", choices=["value", "expression"], default="value")
    ch.add_argument("--count", type=int, required=True)
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--exclude", action="append", default=[], help="iCoT file whose questions must not be emitted")
    ch.add_argument("--out", required=True)
    g = pr_sub.add_parser("gsm8k-aug", help="the GSM8k-Aug training set (hub, or offline from GSM8K train.jsonl) "
                                            "minus the validation questions; OUT/train.txt + OUT/manifest.json")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--source", choices=["hub", "gsm8k-train"], default="gsm8k-train",
                   help="hub: whynlp/gsm8k-aug via `datasets` (network); gsm8k-train: offline, equation-only "
                        "rationales from GSM8K's train.jsonl (default)")
    g.add_argument("--gsm8k-train", default="../shared/data/gsm8k/train.jsonl", help="GSM8K train.jsonl")
    g.add_argument("--valid", default="../shared/data/gsm8k-aug/valid.txt",
                   help="GSM8k-Aug validation file whose questions are excluded")

    d = sub.add_parser("demo", help="the whole pipeline on the built-in reasoning-depth task (6-step chains), on "
                                    "the CPU")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--train-teacher", action="store_true",
                   help="train the CoT-SFT teacher from scratch instead of using the shipped checkpoint (~5 min)")
    d.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage")

    c = sub.add_parser("compare", help="methods x seeds on one task under one budget: accuracy (mean ± 95%% "
                                       "t-interval over seeds), generated tokens, latency, speedup vs cot-sft",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_COMPARE_EPILOG)
    c.add_argument("--teacher", required=True, help="YAML preset of the CoT-SFT teacher (the cot-sft row)")
    c.add_argument("--student", required=True, help="YAML preset of the students (method set per run; the "
                                                    "curriculum, budget and method sections apply to all)")
    c.add_argument("--methods", default="no-cot,cot-sft,icot-si,coconut,codi,lori",
                   help="comma-separated methods (default: all six: no-cot,cot-sft,icot-si,coconut,codi,lori)")
    c.add_argument("--seeds", default="0,1", help="comma-separated training seeds (train.seed; default: 0,1)")
    c.add_argument("--out", required=True, help="output folder: OUT/seed-S/METHOD runs, results.json, results.md, "
                                                "accuracy_vs_tokens.png")
    c.add_argument("overrides", nargs="*", help="dotted overrides for every run, or prefixed: teacher./student. "
                                                "for one side, METHOD: for one method (codi:curriculum.stages=0)")
    return p


_COMPARE_EPILOG = """\
Per seed S: the teacher trains in OUT/seed-S/cot-sft (train.seed=S); every other method trains in OUT/seed-S/METHOD
from the student preset with method=METHOD, train.seed=S and model.init_from = that teacher (LoRi also distils from
it through OUT/seed-S/lori-cache). The data seed stays fixed: every run sees the same problems. Finished runs and
their evaluations are reused, so an interrupted compare continues.

example (the 4x4 six-method table; hours on a CPU):
  lori compare --teacher configs/mult4x4-cot-sft.yaml --student configs/mult4x4-lori.yaml \\
      --methods no-cot,cot-sft,icot-si,coconut,codi,lori --seeds 0,1 --out out/compare-4x4
"""


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    paths = [x for x in items if "=" not in x]
    return paths, [x for x in items if "=" in x]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, letting key=value overrides follow options (``lori eval RUN --out DIR eval.limit=8``).

    argparse alone stops filling a positional list at the first option, so words after it would be
    "unrecognized"; those that are not options go back into the verb's positional list.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    target = {"train": "overrides", "precompute": "overrides", "eval": "checkpoints", "demo": "overrides",
              "analyze": "overrides", "compare": "overrides"}.get(
        args.verb)
    if extra and target is not None and not any(x.startswith("-") for x in extra):
        setattr(args, target, [*(getattr(args, target) or []), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def single_process(verb: str) -> None:
    """``lori eval | export | analyze | demo | compare`` run in one process; under a multi-process launcher every
    process would write the same files."""
    from .distributed import launched_processes

    n = launched_processes()
    if n > 1:
        raise LoriError(f"lori {verb} runs in one process, but a launcher started {n} (WORLD_SIZE={n}); run it "
                        "without torchrun / accelerate launch (only train and precompute use several processes)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # lm_eval's own options, passed through unparsed (lori.harness)
        try:
            from .harness import cli

            return cli(argv[1:])
        except LoriError as e:
            print(f"lori: error: {e}", file=sys.stderr)
            return 2
    args = _parse(argv)
    try:
        if args.verb in ("eval", "analyze", "demo", "compare", "export"):
            single_process(args.verb)
        if args.verb in ("train", "precompute"):
            from .config import load_config

            config, overrides = args.config, args.overrides
            if config is not None and "=" in config:  # no preset: the first argument is already an override
                config, overrides = None, [config, *overrides]
            cfg = load_config(config, overrides)
            if args.verb == "train":
                from .training.loop import train

                train(cfg)
            else:
                from .precompute import precompute

                precompute(cfg)
        elif args.verb == "eval":
            from .evaluation.run import eval_checkpoints

            paths, overrides = _split_overrides(args.checkpoints)
            eval_checkpoints(paths, overrides, args.out)
        elif args.verb == "analyze":
            from .analyze import AnalyzeOptions, analyze

            analyze(args.checkpoint, args.overrides, student=args.student, out=args.out,
                    options=AnalyzeOptions(split=args.data_split, n=args.n, seed=args.seed,
                                           batch_size=args.batch_size, probe_examples=args.probe_examples))
        elif args.verb == "export":
            from .export import export

            export(args.run, args.out, max_shard_size=args.max_shard_size, results=args.results,
                   push_to_hub=args.push_to_hub, private=args.private)
        elif args.verb == "prepare":
            _prepare(args)
        elif args.verb == "demo":
            from .demo import run_demo

            run_demo(Path(args.out), args.overrides, train_teacher=args.train_teacher)
        elif args.verb == "compare":
            from .compare import run_compare

            run_compare(args.teacher, args.student, args.methods, args.seeds, Path(args.out), args.overrides)
        return 0
    except LoriError as e:
        print(f"lori: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lori: interrupted; completed checkpoints and files are kept", file=sys.stderr)
        return 130


def _prepare(args) -> None:
    if args.what == "gsm8k-aug":
        from .data.gsm8k_aug import prepare_gsm8k_aug

        m = prepare_gsm8k_aug(args.out, args.source, args.gsm8k_train, args.valid)
        print(f"[lori] wrote {m['written']} problems to {m['output']['path']} (source {m['source']}, read "
              f"{m['read']}, excluded {m['excluded']} validation questions); manifest beside it")
        return
    from .data import generate_multiplication, read_examples, write_icot

    if args.count < 1:
        raise LoriError(f"--count must be >= 1, got {args.count}: an empty data file is no training set")
    if args.what == "chains":
        from .data.chains import generate as generate_chains

        exclude = [ex for f in args.exclude for ex in read_examples(f, "icot")]
        examples = generate_chains(args.count, args.seed, args.steps, args.modulus, args.ops, args.back_ref,
                                   args.rationale, exclude=exclude)
        write_icot(examples, args.out)
        print(f"[lori] wrote {len(examples)} {args.steps}-step chains mod {args.modulus} to {args.out} (seed "
              f"{args.seed}, {len(exclude)} excluded questions)")
        return

    try:
        n, m = (int(x) for x in args.digits.lower().split("x"))
    except ValueError:
        raise LoriError(f"--digits {args.digits!r}: expected NxM, e.g. 4x4") from None
    exclude = [ex for f in args.exclude for ex in read_examples(f, "icot")]
    examples = generate_multiplication(n, m, args.count, args.seed, exclude=exclude)
    write_icot(examples, args.out)
    print(f"[lori] wrote {len(examples)} {n}x{m} problems to {args.out} (seed {args.seed}, "
          f"{len(exclude)} excluded pairs)")
