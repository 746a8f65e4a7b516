"""``lori lm-eval ARGS``: lm-evaluation-harness's command line with the ``lori`` model type registered
(lori.lm_eval_model). Its options pass through unparsed; ``--tasks gsm8k_aug_test`` is refused in one line when its
data file is not where the task reads it (relative to the working directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AUG_TEST = "gsm8k_aug_test"
AUG_TEST_FILE = "../shared/data/gsm8k-aug/test.txt"  # the task's data_files, relative to the working directory

PASS_THROUGH = True  # the parser does not read its words: lm_eval does


def add_arguments(p) -> None:
    pass


def run_argv(argv: list[str]) -> int:
    from ..errors import LoriError
    from ..lm_eval_model import HAVE_LM_EVAL, INSTALL, TASKS_DIR

    if not HAVE_LM_EVAL:
        raise LoriError(f"lori lm-eval needs lm-eval: {INSTALL}")
    tasks = [t for i, a in enumerate(argv) for t in
             (a.split("=", 1)[1] if a.startswith("--tasks=") else argv[i + 1] if a == "--tasks" and i + 1 < len(argv)
              else "").split(",")]
    if AUG_TEST in tasks and not Path(AUG_TEST_FILE).is_file():
        raise LoriError(f"--tasks {AUG_TEST} reads {AUG_TEST_FILE} relative to the working directory, and "
                        f"{Path(AUG_TEST_FILE).resolve()} does not exist: run lori lm-eval from the repository root "
                        "(beside ../shared/data)")
    import lm_eval.evaluator
    from lm_eval.__main__ import cli_evaluate  # lm-eval's whole command line: only `lori lm-eval` loads it

    lm_eval.evaluator.get_git_commit_hash = _git_hash  # lm-eval's own prints git's "fatal: not a git repository"

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


def _git_hash() -> str | None:
    """The working directory's git commit for lm-eval's results, or None, without git's complaint outside a
    repository."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
