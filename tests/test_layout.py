"""The package's layout: no import circles between ``cnn_ray`` modules, found statically.

The graph is read with :mod:`ast` (nothing is imported, no Ray): every ``import`` and
``from ... import`` anywhere in a module (module level, inside functions, under
``if TYPE_CHECKING:``), absolute or relative, and ``importlib.import_module`` targets given as
string constants that name a module of the package (``cnn_ray.tune``'s lazy exports).

Packages (``__init__.py``):

* ``from pkg import name``: an edge to the submodule ``pkg.name`` when there is one, else to
  ``pkg`` itself (the name is one of its ``__init__``'s), also from a module inside ``pkg``. So a
  submodule that takes names from its own package's ``__init__``, which imports that submodule
  back, is a circle.
* Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``: an edge to each of those
  packages that does not contain the importer (for a module inside a package, Python started that
  ``__init__`` before the module, so no edge). So an ``__init__`` that imports its own submodules
  is not a circle by itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnn_ray"


def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module under ``package``."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _contains(pkg: str, module: str) -> bool:
    return module == pkg or module.startswith(pkg + ".")


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line importing it}}`` within ``package``."""
    mods = modules(package)
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for mod, (path, is_pkg) in mods.items():
        home = (mod if is_pkg else mod.rpartition(".")[0]).split(".")  # relative imports' base
        edges = graph[mod]

        def add(target: str, line: int) -> None:
            if target not in mods or target == mod:
                return
            edges.setdefault(target, line)
            for pkg in _ancestors(target):  # their __init__ runs first
                if pkg in mods and not _contains(pkg, mod):
                    edges.setdefault(pkg, line)

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(home[:len(home) - node.level + 1]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        add(f"{base}.{alias.name}", node.lineno)
                    else:
                        add(base, node.lineno)
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in mods and "." in node.value):
                add(node.value, node.lineno)  # importlib.import_module("cnn_ray.tune.sweep")
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle (``[a, b, ..., a]``) per strongly connected component of ``graph`` that has
    more than one module (Tarjan's algorithm, iterative; then a shortest path back to ``a``)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    cycles = []
    for component in components:
        inside, first = set(component), component[0]
        paths, frontier = {first: [first]}, [first]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for node in frontier:
                for child in sorted(graph[node]):
                    if child == first:
                        cycle = paths[node] + [first]
                        break
                    if child in inside and child not in paths:
                        paths[child] = paths[node] + [child]
                        nxt.append(child)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a (line 12) -> b (line 40) -> a``: each module and the line importing the next."""
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
        f" -> {cycle[-1]}"


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_graph_reads_every_kind_of_import(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "import os\n",
        "mid.py": "from . import low\nfrom .low import x\n",
        "top.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.mid import y\n"
                   "def f():\n    import pkg.sub.leaf\n"),
        "lazy.py": "import importlib\nM = importlib.import_module('pkg.top')\n",
        "sub/__init__.py": "from .leaf import z\nfrom pkg.sub import leaf\n",
        "sub/leaf.py": "from ..low import x\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.mid"] == {"pkg.low": 1}  # relative, the module and a name of it
    assert graph["pkg.top"] == {"pkg.mid": 3, "pkg.sub.leaf": 5, "pkg.sub": 5}  # runs sub's init
    assert graph["pkg.lazy"] == {"pkg.top": 2}  # importlib by name
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1}  # an __init__ importing its submodule
    assert graph["pkg.sub.leaf"] == {"pkg.low": 1}  # its own package's __init__ already runs
    assert find_cycles(graph) == []


def test_a_submodule_taking_names_from_its_own_init_is_a_circle(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "sub/__init__.py": "from .a import f\n",
                              "sub/a.py": "def f():\n    from pkg.sub import g\n",
                              "sub/b.py": "from pkg.sub import a\n"})
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.sub.a": 1}
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.a", "pkg.sub"]]


def test_graph_sees_the_packages_imports():
    graph = import_graph()
    # module level, function level (doctor.run's prepare_data), relative (models/__init__),
    # importlib by name (tune/__init__'s lazy exports)
    assert "cnn_ray.train.checkpoint" in graph["cnn_ray.evaluate"]
    assert "cnn_ray.data.prepare" in graph["cnn_ray.doctor.run"]
    assert {"cnn_ray.models.small", "cnn_ray.models.registry"} <= set(graph["cnn_ray.models"])
    assert "cnn_ray.tune.sweep" in graph["cnn_ray.tune"]
    assert "cnn_ray.models" not in graph["cnn_ray.models.small"]


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_circles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import circles in cnn_ray/:\n" + "\n".join(
        describe(c, graph) for c in cycles)
