"""Per-digit accuracy of multiplication predictions: a diagnostic beside the exact match, for students that get no
problem fully right. Reads the ``predictions-*.jsonl`` files that ``lori eval`` / ``lori compare`` write.

    python runs/digit_accuracy.py out/mult4x4-eval/predictions-*.jsonl          # label = folder/file
    python runs/digit_accuracy.py no-cot=out/a/predictions-no-cot-step-001600.jsonl lori=out/b/...

Prints a Markdown table: problems, exact match %, all digits %, then each digit place % (place 1 = the least
significant digit, the first one iCoT writes). The digit rule is ``DigitStringTask.digit_matches``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lori.errors import LoriError
from lori.tasks import get_task


def digit_table(files: dict[str, Path]) -> str:
    task = get_task("multiplication")
    rows, places = [], 0
    for label, path in files.items():
        matches, exact = [], 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                p = json.loads(line)
                m = task.digit_matches(p["generated"], p["gold"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise LoriError(f"{path}:{n}: not a prediction line of lori eval ({e})") from None
            matches.append(m)
            exact += bool(p["correct"])
        if not matches:
            raise LoriError(f"{path}: no predictions")
        width = max(len(m) for m in matches)
        per_place = [sum(m[i] for m in matches if i < len(m)) / sum(i < len(m) for m in matches) for i in range(width)]
        digits = sum(map(sum, matches)) / sum(map(len, matches))
        rows.append((label, len(matches), exact / len(matches), digits, per_place))
        places = max(places, width)
    head = "| predictions | n | exact % | digits % | " + " | ".join(f"d{i + 1} %" for i in range(places)) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * places]
    for label, n, ex, dg, pp in rows:
        cells = [f"{100 * x:.1f}" for x in pp] + [""] * (places - len(pp))
        lines.append(f"| {label} | {n} | {100 * ex:.1f} | {100 * dg:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise LoriError(f"no such predictions file: {missing[0]}")
        print(digit_table(files))
    except LoriError as e:
        print(f"digit_accuracy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
