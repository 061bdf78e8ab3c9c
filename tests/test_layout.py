"""The core's shape: no import circles (function-level imports included), the core names no
plugin, and each room keeps to its idea (the split loop holds no pretraining or row building;
only the command line and the launchers call it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "ssl_bench"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of ssl_bench it imports``, anywhere in its file (a function-level
    import is an edge too).  ``from . import x`` is an edge to the submodule ``x`` when there is
    one, not to the package."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_has_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_names_no_plugin():
    for name, targets in import_graph().items():
        assert not any(t.startswith(("ssl_bench.plugins", "ssl_bench.tasks")) for t in targets), name
    for path in CORE.rglob("*.py"):
        if path.name == "registry.py":  # its source-tree fallback mirrors pyproject's entry points
            continue
        text = path.read_text()
        assert "ssl_bench.plugins." not in text.replace("ssl_bench.plugins.*", ""), path
        assert "ssl_bench.tasks." not in text.replace("ssl_bench.tasks.*", ""), path


def test_the_split_loop_keeps_to_itself():
    """Pretraining, corpus handling and row building live in their own rooms; no protocol
    reaches back into the runner."""
    runner = (CORE / "runner.py").read_text()
    tree = ast.parse(runner)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for room_idea in ("pretrain_encoder", "pretrain_hash", "recipe_id", "corpus_clips", "mean_std",
                      "compute_columns", "apply_pretraining_record", "extract_embeddings"):
        assert room_idea not in defined
    assert not (CORE / "corpus.py").exists()
    graph = import_graph()
    # the command line and the launchers (which execute a sweep's units) call the split loop;
    # nothing else does
    callers = {name for name, targets in graph.items() if "ssl_bench.runner" in targets}
    assert callers <= {"ssl_bench.cli"} | {n for n in graph if n.startswith("ssl_bench.launch.")}, callers
