"""The house rules of docs/contributing.md that a test can hold: a short README, no history words in the tree,
short module docstrings, and a training loop that reads in one sitting."""

from __future__ import annotations

import ast
import re
import subprocess

from conftest import REPO


def tracked_text_files() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for name in names:
        path = REPO / name
        if path.is_file() and not path.is_symlink() and path.suffix not in (".png", ".safetensors", ".json"):
            try:
                out[name] = path.read_text()
            except UnicodeDecodeError:
                continue
    return out


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_no_history_words_in_the_tree():
    """The commit log is the history: no tracker numbers or numbered work periods in code, configs or docs."""
    bad = [f"{name}: {m.group(0)!r}" for name, text in tracked_text_files().items()
           for m in re.finditer(r"(?i)\b(issue\s+#?\d+|session\s+\d+)", text)]
    assert not bad, bad


def test_module_docstrings_are_short():
    long = []
    for path in sorted((REPO / "src" / "lori").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        if doc and len(doc.strip("\n").splitlines()) > 12:
            long.append(f"{path.relative_to(REPO)}: {len(doc.strip(chr(10)).splitlines())} lines")
    assert not long, long


def test_the_training_loop_reads_in_one_sitting():
    tree = ast.parse((REPO / "src" / "lori" / "training" / "loop.py").read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_train"]
    assert fn.end_lineno - fn.lineno + 1 <= 120
