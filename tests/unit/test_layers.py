"""The import graph of ``src/lori`` flows one way down, and commands never import each other.

Layers, lowest first (the README's layout tree states the same order). A module may import from its own layer and
from lower ones, at module level or inside a function; never from a higher one:

    0 foundation  errors, utils, tasks (the answer policy), distributed
    1 config      config
    2 leaves      data, losses, subspace
    3 models      models (building, loading, tokenizer, checkpoint folders, LoRA, the latent student)
    4 methods     methods (one file per method; methods/lori/ holds LoRi's teacher side and cache too)
    5 evaluation  evaluation, student (the Python API)
    6 training    training (the loop and its parts, checkpoints, sharding, trackers, run identity)
    7 workflows   pipeline, analysis, export, lm_eval_model
    8 commands    commands (one module per verb, none importing another), cli

The package root holds only ``__version__`` and the lazy ``lori.load``: layer 0.

The imports form no cycle, and every module imports in a fresh interpreter in sorted and in reverse order.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"
PKG = SRC / "lori"

# Longest matching prefix wins.
LAYERS = {
    "lori.errors": 0, "lori.utils": 0, "lori.tasks": 0, "lori.distributed": 0,
    "lori.config": 1,
    "lori.data": 2, "lori.losses": 2, "lori.subspace": 2,
    "lori.models": 3,
    "lori.methods": 4,
    "lori.evaluation": 5, "lori.student": 5,
    "lori.training": 6,
    "lori.pipeline": 7, "lori.analysis": 7, "lori.export": 7, "lori.lm_eval_model": 7,
    "lori.commands": 8, "lori.cli": 8, "lori.__main__": 8,
    "lori": 0,  # the package root: __version__ and lori.load, which imports lori.student only when called
}

# (importer, imported) pairs that run upwards, each with its reason. Keep this list short.
ALLOWED_UP = {
    ("lori.config", "lori.data.chains"):
        "validating data.chain_* calls the chains generator's own option check (one definition of the valid "
        "options); imported in the function because importing lori.data runs its __init__, which loads torch "
        "through lori.utils, and reading a config must not",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """``(imported module, at module level, line)`` for every ``lori`` import in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
            if node.module is None or target == "lori" or target in (package,):
                # `from . import x` / `from lori import x`: x may be a submodule
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules() else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, id(node) in top, node.lineno) for t in targets if t == "lori" or t.startswith("lori.")]
    return found


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer_and_no_import_runs_upwards():
    bad = []
    for name, path in modules().items():
        for target, _, line in imports(name, path):
            if layer(target) > layer(name) and (name, target) not in ALLOWED_UP:
                bad.append(f"{path.relative_to(SRC)}:{line}: {name} (layer {layer(name)}) imports {target} "
                           f"(layer {layer(target)})")
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_command_imports_another_command():
    bad = [f"{path.relative_to(SRC)}:{line}: {name} imports {target}"
           for name, path in modules().items() if name.startswith("lori.commands.")
           for target, _, line in imports(name, path)
           if target.startswith("lori.commands.") and target != name]
    assert not bad, "a command imports another command (move what they share into the library):\n" + "\n".join(bad)


def test_the_allowed_upward_imports_still_exist():
    edges = {(name, t) for name, path in modules().items() for t, _, _ in imports(name, path)}
    assert set(ALLOWED_UP) <= edges, f"stale allow-list entries: {set(ALLOWED_UP) - edges}"


@pytest.mark.parametrize("which", ["module level", "function-local included"])
def test_the_import_graph_has_no_cycle(which):
    graph = {name: {t for t, top, _ in imports(name, path) if (top or which != "module level") and t != name}
             for name, path in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if n.startswith(m + "."):  # importing one's own ancestor package
                continue
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m in graph and state.get(m) is None:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if state.get(n) is None:
            visit(n)


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    names = sorted(n for n in modules() if n != "lori.__main__")  # importing it runs the CLI
    if order == "reversed":
        names.reverse()
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
