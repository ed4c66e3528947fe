"""The house's plan: no import circles between metanet's modules, and each package imports only the packages
the contract below lets it (data flows one way: data -> spec -> model/estimator -> stages -> store -> export).

The graph counts every import, at module level or inside a function (a lazy import is still a dependency a
newcomer has to follow), of every module of the installed packages, found by walking their source with ``ast``.
"""
import ast
import importlib
from pathlib import Path

import pytest

# Layers from the bottom: a package may import its own layer and the ones below, never one above.
LAYERS = [
    ("core", ["metanet", "metanet.errors", "metanet.budget", "metanet.quiet", "metanet.seeds", "metanet.atomic",
              "metanet.writable"]),
    ("plugin machinery", ["metanet.plugin"]),
    ("data", ["metanet.data"]),
    ("spec, model, estimator, kernels", ["metanet.search_spaces", "metanet.kernels"]),
    ("training", ["metanet.train"]),
    ("evaluation", ["metanet.evaluate"]),
    ("run store", ["metanet.runs"]),
    ("search", ["metanet.search"]),
    ("export", ["metanet.export"]),
    ("built-in plugins", ["metanet.plugins"]),
    ("command line", ["metanet.cli"]),
]
# Imports that go up on purpose, each with its reason.
ALLOWED_UP = {
    # the package's __init__ registers the timm models at import (timm.create_model works after `import metanet`)
    ("metanet", "metanet.search_spaces.timm_models"),
    # ... and resolves `metanet.hookimpl` / `metanet.registry` / `metanet.Setting` on first use (PEP 562)
    ("metanet", "metanet.plugin.hookspecs"), ("metanet", "metanet.plugin.manager"),
    ("metanet", "metanet.plugin.settings"),
    # `python -m metanet` is the command line
    ("metanet.__main__", "metanet.cli"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("metanet", "metanet.plugins", "metanet.search_spaces", "metanet.kernels"):
        pkg = importlib.import_module(top)
        root = Path(pkg.__file__).parent
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([top, *parts])
            if top == "metanet" and parts and parts[0] in ("plugins", "search_spaces", "kernels"):
                continue  # never present: these are mapped from the sibling folders
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            # every import of a submodule imports the root package first: an edge to it says nothing
            if t and t != name and t != "metanet":
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, (_, pkgs) in enumerate(LAYERS):
        for p in pkgs:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    assert best is not None, f"{module} belongs to no layer of the contract"
    return best


def test_no_module_imports_itself_round_a_circle(graph):
    # Tarjan's strongly connected components: any with more than one module is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == [], f"import circles: {circles}"


def test_each_package_imports_only_the_layers_below_it(graph):
    wrong = sorted((a, b) for a, deps in graph.items() for b in deps
                   if _layer(b) > _layer(a) and (a, b) not in ALLOWED_UP)
    assert wrong == [], "imports against the contract (module -> the higher module it imports):\n" + "\n".join(
        f"  {a} ({LAYERS[_layer(a)][0]}) -> {b} ({LAYERS[_layer(b)][0]})" for a, b in wrong)


def test_every_module_belongs_to_a_layer_and_the_tree_has_no_flat_room(graph):
    for module in graph:
        _layer(module)
    top_level = sorted(m for m in graph if m.count(".") == 1 and m.startswith("metanet.")
                       and not m.startswith(("metanet.plugins", "metanet.search_spaces", "metanet.kernels"))
                       and not Path(importlib.import_module(m).__file__).name == "__init__.py")
    # what stays beside the packages: the entry point and six core modules, each a page or less
    assert top_level == ["metanet.__main__", "metanet.atomic", "metanet.budget", "metanet.errors", "metanet.quiet",
                         "metanet.seeds", "metanet.writable"]


def test_moved_modules_import_under_their_old_names():
    import metanet
    for old, new in metanet.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    from metanet import hookimpl  # noqa: F401 - what plugins import
    from metanet.hookspecs import hookimpl as same  # noqa: F401
    from metanet.search import SearchConfig, run_search  # noqa: F401 - the README's Python API
    from metanet.search_config import SearchConfig as old  # noqa: F401
    from metanet.stages import StageContext, evaluate_candidate  # noqa: F401
    from metanet.training import Schedule, batches, train_classifier  # noqa: F401
    assert old is SearchConfig


def test_every_folder_of_modules_is_a_package_with_its_contract():
    # a folder without __init__.py still imports (a namespace package) but is no package: setup.py does not
    # ship it, the API docs cannot find it, and its contract paragraph is missing
    root = Path(__file__).resolve().parents[1]
    for top in ("metanet", "plugins", "search_spaces", "kernels"):
        for folder in [root / top, *(p for p in (root / top).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(folder.glob("*.py")):
                continue
            init = folder / "__init__.py"
            assert init.exists(), f"{folder.relative_to(root)} holds modules but no __init__.py"
            if top == "metanet" and folder != root / top:
                assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(root)} has no docstring"
