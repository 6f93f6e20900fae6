"""The layers of the package, enforced: every import (at the top of a module or inside a
function) points down a layer or stays inside its own package, and no chain of imports
between rp_tune's modules closes a cycle.

The order, lowest first (README, "How the code is laid out"):
core < models < sparsity < methods < config < data < trial < planning < adapters < results,
then `run_sweep.py` (the CLI) above them all. The shims for older import paths
(`rp_tune/sweep.py`, `train.py`, `report.py`) only forward to the new places.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rp_tune"
LAYERS = ("core", "models", "sparsity", "methods", "config", "data", "trial", "planning",
          "adapters", "results")  # fmt: skip
SHIMS = {"rp_tune.sweep", "rp_tune.train", "rp_tune.report"}  # old import paths, forwarding


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The rp_tune modules `name` imports anywhere in its source (function-level included);
    `from rp_tune.x import y` counts as rp_tune.x.y where that is a module."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rp_tune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rp_tune":
                continue
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    found.discard(name)
    return found


def layer(name: str) -> int:
    """The layer of a module: its package's place in LAYERS."""
    parts = name.split(".")
    assert len(parts) > 1 and parts[1] in LAYERS, (
        f"{name} is in no layer: a module of rp_tune lives in one of the packages {LAYERS}"
    )
    return LAYERS.index(parts[1])


def test_every_module_lives_in_a_layer():
    for name in MODULES:
        if name != "rp_tune" and name not in SHIMS:
            layer(name)


def test_every_import_points_down_or_stays_in_its_package():
    upward = []
    for name in MODULES:
        if name == "rp_tune" or name in SHIMS:
            continue
        for target in imports(name):
            if target in SHIMS or target == "rp_tune":
                upward.append(f"{name} imports {target}, an old path kept only for users")
            elif layer(target) > layer(name):
                upward.append(f"{name} ({LAYERS[layer(name)]}) imports {target} "
                              f"({LAYERS[layer(target)]}, a higher layer)")  # fmt: skip
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the import graph (a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    """Module -> modules it imports; a package's __init__ counts as importing nothing of its
    own modules that it does not name."""
    return {name: {t for t in imports(name) if t in MODULES} for name in MODULES}


def test_no_import_cycle():
    cycle = find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a2"}, "a2": set(), "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The check itself: a function-level import of the Ray adapter from a trial module."""
    fake = tmp_path / "rp_tune" / "trial" / "leak.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from rp_tune.adapters.ray import sweep\n")
    monkeypatch.setitem(MODULES, "rp_tune.trial.leak", fake)
    monkeypatch.setitem(MODULES, "rp_tune.adapters.ray.sweep", fake)
    assert imports("rp_tune.trial.leak") == {"rp_tune.adapters.ray.sweep"}
    assert layer("rp_tune.adapters.ray.sweep") > layer("rp_tune.trial.leak")
