"""``lori lm-eval ARGS``: lm-evaluation-harness's command line with the ``lori`` model type registered
(lori.lm_eval_model). Its options pass through unparsed."""

from __future__ import annotations

import sys

PASS_THROUGH = True  # the parser does not read its words: lm_eval does


def add_arguments(p) -> None:
    pass


def run_argv(argv: list[str]) -> int:
    from ..errors import LoriError
    from ..lm_eval_model import HAVE_LM_EVAL, INSTALL, TASKS_DIR

    if not HAVE_LM_EVAL:
        raise LoriError(f"lori lm-eval needs lm-eval: {INSTALL}")
    from lm_eval.__main__ import cli_evaluate  # lm-eval's whole command line: only `lori lm-eval` loads it

    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv) and \
            not any(a in ("-h", "--help") for a in argv[:1]) and argv[:1] not in (["ls"], ["validate"]):
        argv = [*argv, "--include_path", str(TASKS_DIR)]  # the offline tasks shipped with lori (gsm8k_aug_test)
    old = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse and lm-eval exit with a status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return 0
