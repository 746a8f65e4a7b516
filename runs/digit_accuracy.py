"""Per-digit accuracy of multiplication predictions (``lori.evaluation.digits``): a diagnostic beside the exact
match, for students that get no problem fully right. Reads the ``predictions-*.jsonl`` files that ``lori eval`` /
``lori compare`` write.

    python runs/digit_accuracy.py out/mult4x4-eval/predictions-*.jsonl          # label = folder/file
    python runs/digit_accuracy.py no-cot=out/a/predictions-no-cot-step-001600.jsonl lori=out/b/...

Prints a Markdown table: problems, exact match %, all digits %, then each digit place % (place 1 = the least
significant digit, the first one iCoT writes).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lori.errors import LoriError
from lori.evaluation.digits import digit_shares, digit_table, read_predictions
from lori.tasks import get_task


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    files = {}
    for arg in argv:
        label, _, path = arg.rpartition("=") if "=" in arg else ("", "", arg)
        path = Path(path)
        files[label or f"{path.parent.name}/{path.stem.removeprefix('predictions-')}"] = path
    try:
        task = get_task("multiplication")
        print(digit_table({label: digit_shares(read_predictions(p), task) for label, p in files.items()}))
    except LoriError as e:
        print(f"digit_accuracy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
