"""The layers hold: the core never imports gradio, and merge methods stay pure.

DESIGN.md's arrows: never core -> ui; never merging -> engine, attacks, data (nor calibrate,
which prepares data for it). The import graph is read from the source (AST, every import
statement, lazy ones inside functions included), so a violation is caught even on a path no
test executes.
"""
from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import explorer

PACKAGE = Path(explorer.__file__).parent
ROOT = PACKAGE.parent


def module_names() -> list[str]:
    """Every module of the package (``explorer.x.y``), packages as their ``__init__``'s name."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _path_of(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports_of(module: str) -> set[str]:
    """The ``explorer`` modules ``module`` imports anywhere in its source (relative ones resolved;
    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``)."""
    path = _path_of(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = set(module_names())
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == "explorer" or m.startswith("explorer.")}


def import_graph() -> dict[str, set[str]]:
    """``module -> explorer modules it imports`` for the whole package (room for more checks)."""
    return {m: imports_of(m) for m in module_names()}


def reachable(graph: dict[str, set[str]], starts: list[str]) -> set[str]:
    """Modules reachable from ``starts`` along import edges (the starts included)."""
    seen, todo = set(), list(starts)
    while todo:
        m = todo.pop()
        if m not in seen and m in graph:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_the_core_imports_without_gradio():
    core = [m for m in module_names() if not (m == "explorer.ui" or m.startswith("explorer.ui."))
            and not m.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for m in {core!r}:\n    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'gradio' or m.startswith('gradio.'))\n"
            "print('GRADIO', bad[:3])\n"
            "sys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(core) > 20  # the walk really found the package


def test_merging_reaches_neither_engine_attacks_data_nor_calibrate():
    graph = import_graph()
    merging = [m for m in graph if m == "explorer.merging" or m.startswith("explorer.merging.")]
    assert "explorer.merging.registry" in merging and "explorer.merging.stability" in merging
    reached = reachable(graph, merging)
    forbidden = ("explorer.engine.frontier", "explorer.attacks", "explorer.data", "explorer.calibrate", "explorer.ui",
                 "explorer.cli", "explorer.app.service")
    bad = sorted(m for m in reached if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"explorer.merging reaches {bad}"
    # The graph reader sees real edges (guards the check itself).
    assert "explorer.merging.registry" in graph["explorer.merging"]
    assert "explorer.merging" in graph["explorer.calibrate"]
    assert "explorer.calibrate" in graph["explorer.engine.frontier"]


def test_calibrate_does_not_reach_the_engine_or_the_ui():
    graph = import_graph()
    reached = reachable(graph, [m for m in graph if m.startswith("explorer.calibrate")])
    assert not [m for m in reached if m in ("explorer.engine.frontier", "explorer.app.service")
                or m.startswith(("explorer.ui", "explorer.cli"))]


def test_no_import_cycles():
    """Acyclic, lazy imports included (a function-level import hides a cycle from Python's import
    order, not from a reader or a refactoring)."""
    graph = {m: targets - {m} for m, targets in import_graph().items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError("import cycle: " + " -> ".join(exc.args[1])) from None
    assert "explorer.zoo" in graph["explorer.cli.serve"]      # an import inside run() is an edge


def _in_cli(module: str) -> bool:
    return module == "explorer.cli" or module.startswith("explorer.cli.")


def test_nothing_outside_the_cli_imports_it():
    """Neither the core, the UI nor ``app.py`` imports the CLI (``explorer/__main__.py``, the
    three-line ``python -m explorer`` entry, is the CLI's own)."""
    graph = import_graph()
    assert "explorer.cli.common" in graph["explorer.cli.sweep"]       # the reader sees the CLI's edges
    app = ast.parse((ROOT / "app.py").read_text())
    graph["app"] = {a.name for n in ast.walk(app) if isinstance(n, ast.Import) for a in n.names} | {
        n.module or "" for n in ast.walk(app) if isinstance(n, ast.ImportFrom)}
    offenders = {m: sorted(filter(_in_cli, targets)) for m, targets in graph.items()
                 if not _in_cli(m) and m != "explorer.__main__"}
    assert not {m: t for m, t in offenders.items() if t}, offenders


# Which packages each layer may import (DESIGN.md's arrows, one row per package; the README's
# "Layout" section says the same in words). A new arrow is a design change: add it here and there.
ALLOWED = {
    "config": {"merging", "attacks", "data", "zoo", "stats", "core"},   # lazy resolvers only
    "store": {"stats", "config"},
    "core": {"config"},
    "stats": set(),
    "zoo": {"core"},
    "data": {"zoo", "config"},
    "attacks": {"config", "core"},
    "merging": {"config", "core"},
    "evaluation": {"attacks", "config", "core"},
    "calibrate": {"attacks", "config", "core", "data", "merging", "evaluation"},
    "finetune": {"config", "core", "data", "evaluation", "zoo", "attacks"},
    "engine": {"attacks", "calibrate", "config", "core", "data", "evaluation", "merging", "stats", "store",
               "zoo"},
    "executors": {"attacks", "config", "core", "engine", "merging", "store", "zoo", "stats", "evaluation"},
    "studies": {"attacks", "config", "core", "data", "engine", "evaluation", "executors", "merging", "stats",
                "viz", "zoo", "store"},
    "viz": {"stats", "config"},
    "app": {"attacks", "config", "core", "engine", "evaluation", "executors", "store", "zoo", "stats", "data",
            "merging"},
    "ui": {"app", "attacks", "config", "core", "data", "merging", "stats", "viz", "zoo"},
    "cli": {"app", "attacks", "config", "core", "executors", "finetune", "merging", "stats", "store", "studies",
            "ui", "zoo", "data", "engine", "evaluation", "viz"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "explorer"


def test_every_package_imports_only_the_layers_below_it():
    graph = import_graph()
    layers = {_layer(m) for m in graph} - {"explorer", "__main__"}
    assert layers == set(ALLOWED), f"packages without a row in ALLOWED (or rows for none): {layers ^ set(ALLOWED)}"
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                 if _layer(m) in ALLOWED and _layer(t) not in {_layer(m), "explorer"} | ALLOWED[_layer(m)])
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)
    # the table is read against real edges (guards the check itself)
    assert any(_layer(t) == "engine" for t in graph["explorer.executors.local"])


def test_the_top_level_holds_few_modules_and_the_readme_names_every_package():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "store"], top
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 4)]
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [p for p in packages if f"{p}/" not in layout]
    assert not missing, f"README's Layout section does not name {missing}"
