"""The ``lori`` command: a table of verbs, each a module of ``lori.commands`` (``add_arguments(parser)``, ``run(args)``).

Bad input exits 2 with a one-line message, never a traceback. Only the chosen verb's module is imported, so ``lori
--help`` loads no torch. A command module may set ``SINGLE_PROCESS`` (refused under a multi-process launcher),
``POSITIONAL`` (its list that key=value words after an option go back to), ``PASS_THROUGH`` (its words are not
parsed here; it has ``run_argv(argv)``) and ``EPILOG``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LoriError

# verb -> help; the module is lori.commands.<verb with - as _>
COMMANDS = {
    "train": "train a model (method: cot-sft | no-cot | lori | icot-si | coconut | codi | aux-sum | sim-cot)",
    "precompute": "run the frozen teacher once; write LoRi teacher statistics (lori.cache_dir)",
    "eval": "evaluate checkpoints: accuracy with 95%% CI, tokens, latency, throughput",
    "export": "a self-contained, Hub-ready folder of a student: merged weights (sharded above --max-shard-size), "
              "tokenizer, latent settings, model card",
    "lm-eval": "lm-evaluation-harness's command line with the lori model type (`lori lm-eval --help` is lm_eval's "
               "help)",
    "analyze": "low-rank structure of teacher trajectories, with controls and plots; optionally a latent student's "
               "subspace and a vocabulary probe",
    "prepare": "write a data set in the iCoT format",
    "demo": "the whole pipeline on the built-in reasoning-depth task (6-step chains), on the CPU",
    "compare": "methods x seeds on one task under one budget: accuracy (mean ± 95%% t-interval over seeds), "
               "generated tokens, latency, speedup vs cot-sft",
    "tune": "each student method's recipe chosen on the validation split (the same grid size for every method): "
            "recipes.yaml for lori compare --recipes",
}

USAGE = """\
  lori train CONFIG.yaml [key=value ...]       train any method (the method is a config field)
  lori precompute CONFIG.yaml [key=value ...]  teacher statistics for a LoRi student (lori.cache_dir)
  lori eval CHECKPOINT [CHECKPOINT ...] [--out DIR] [key=value ...]
  lori export RUN --out DIR [--max-shard-size 5GB] [--push-to-hub USER/NAME]
  lori lm-eval --model lori --model_args pretrained=DIR --tasks gsm8k --num_fewshot 0 [lm_eval options ...]
  lori analyze CHECKPOINT [--student CKPT] [--data-split S] [--n N] [--out DIR] [data.*|lori.*=value ...]
  lori prepare multiplication|chains|gsm8k-aug --out FILE ...
  lori demo --out DIR [--train-teacher]
  lori compare --teacher T.yaml --student S.yaml --methods M1,M2,... --seeds 0,1 --out DIR [key=value ...]
  lori tune --teacher T.yaml --student S.yaml --methods M1,M2,... --grid GRID.yaml --out DIR [key=value ...]
"""


def command(verb: str):
    return importlib.import_module(f"lori.commands.{verb.replace('-', '_')}")


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; only ``verb``'s module is imported to add its arguments (None: none)."""
    p = argparse.ArgumentParser(prog="lori", description="lori: distil chain of thought into latent reasoning\n\n"
                                + USAGE, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    for name, help_ in COMMANDS.items():
        if name != verb:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        mod = command(name)
        sp = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"), add_help=not _passes(mod),
                            epilog=getattr(mod, "EPILOG", None), formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
    return p


def _passes(mod) -> bool:
    return getattr(mod, "PASS_THROUGH", False)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, letting key=value overrides follow options (``lori eval RUN --out DIR eval.limit=8``).

    argparse alone stops filling a positional list at the first option, so words after it would be
    "unrecognized"; those that are not options go back into the verb's positional list.
    """
    verb = argv[0] if argv and argv[0] in COMMANDS else None
    p = parser(verb)
    args, extra = p.parse_known_args(argv)
    target = getattr(command(args.verb), "POSITIONAL", None)
    if extra and target is not None and not any(x.startswith("-") for x in extra):
        setattr(args, target, [*(getattr(args, target) or []), *extra])
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def single_process(verb: str) -> None:
    """Commands other than train and precompute run in one process; under a multi-process launcher every process
    would write the same files."""
    from .distributed import launched_processes

    n = launched_processes()
    if n > 1:
        raise LoriError(f"lori {verb} runs in one process, but a launcher started {n} (WORLD_SIZE={n}); run it "
                        "without torchrun / accelerate launch (only train and precompute use several processes)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] and argv[0] in COMMANDS and _passes(command(argv[0])):
            return command(argv[0]).run_argv(argv[1:])
        args = _parse(argv)
        mod = command(args.verb)
        if getattr(mod, "SINGLE_PROCESS", False):
            single_process(args.verb)
        mod.run(args)
        return 0
    except LoriError as e:
        print(f"lori: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lori: interrupted; completed checkpoints and files are kept", file=sys.stderr)
        return 130
