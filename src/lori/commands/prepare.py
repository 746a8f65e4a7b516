"""``lori prepare multiplication | chains | gsm8k-aug``: write a data set in the iCoT format."""

from __future__ import annotations

from ..errors import LoriError

DATA = "../shared/data"  # where the benchmark files live beside a checkout (the defaults below)


def add_arguments(pr) -> None:
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
    ch.add_argument("--rationale", choices=["value", "expression", "values"], default="value",
                    help="<< c = 5 >> per step (default), << c = 2 + 3 = 5 >>, or the bare value 5")
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
    g.add_argument("--gsm8k-train", default=f"{DATA}/gsm8k/train.jsonl", help="GSM8K train.jsonl")
    g.add_argument("--valid", default=f"{DATA}/gsm8k-aug/valid.txt",
                   help="GSM8k-Aug validation file whose questions are excluded")


def run(args) -> None:
    if args.what == "gsm8k-aug":
        from ..data.gsm8k_aug import prepare_gsm8k_aug

        m = prepare_gsm8k_aug(args.out, args.source, args.gsm8k_train, args.valid)
        print(f"[lori] wrote {m['written']} problems to {m['output']['path']} (source {m['source']}, read "
              f"{m['read']}, excluded {m['excluded']} validation questions); manifest beside it")
        return
    from ..data import generate_multiplication, read_examples, write_icot

    if args.count < 1:
        raise LoriError(f"--count must be >= 1, got {args.count}: an empty data file is no training set")
    exclude = [ex for f in args.exclude for ex in read_examples(f, "icot")]
    if args.what == "chains":
        from ..data.chains import generate as generate_chains

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
    examples = generate_multiplication(n, m, args.count, args.seed, exclude=exclude)
    write_icot(examples, args.out)
    print(f"[lori] wrote {len(examples)} {n}x{m} problems to {args.out} (seed {args.seed}, "
          f"{len(exclude)} excluded pairs)")
