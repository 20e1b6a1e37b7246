"""The import rules of DESIGN.md ("Boundaries"), read from the source with `ast`.

Every .py file under core/, ui/ and pages/, and app.py, is parsed (never imported) and each
import statement it contains (at module level, inside functions, under `if TYPE_CHECKING:`) is
an edge. Edges are only those written in the source: importing `core.x.y` also runs
`core/x/__init__.py`, but that implicit edge is not counted. Tests under tests/ are not checked.

Failures list every offending edge as `a -> b`, so a reader can act on each one.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("core", "ui", "pages")
SOURCE_FILES = ("app.py",)
PROJECT_PACKAGES = frozenset({"core", "ui", "pages", "app"})

Graph = Mapping[str, set[str]]  # module -> the modules (or top-level packages) it imports

# Layers, from the bottom. A module belongs to the layer of its longest matching prefix (a prefix
# matches the module itself and everything below it) and may import only its own layer or lower.
LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    # 0 foundation: the root error, named choices, file helpers, settings; import nothing above
    (0, ("core.errors", "core.choices", "core.files", "core.config")),
    # 1 backends: each wraps one third-party library (SQLite, Pillow, open_clip/timm, chromadb)
    (1, ("core.store", "core.gallery.images", "core.encoder", "core.search")),
    # 2 pipelines: compose backends (ingest: reader -> mapper -> writer; the demo data sets)
    (2, ("core.gallery.ingest", "core.gallery.demo", "core.gallery.fashion")),
    # 3 the facade: `Studio` over one data directory
    (3, ("core.studio",)),
    # 4 workflows that measure: metrics, evaluation, online metrics, projection, simulation
    (4, ("core.measure",)),
    # 5 workflows that learn: losses, pairs, the training loop, modes, jobs
    (5, ("core.learn",)),
    # 6 interfaces: the command line and the Streamlit glue
    (6, ("core.__main__", "ui")),
    # 7 the Streamlit entry point and its pages
    (7, ("pages", "app")),
)
# Packages whose children span layers: their __init__ runs whenever a child is imported, so it
# sits with the lowest child and may import nothing from the higher ones.
PACKAGE_MARKERS = {"core": 0, "core.gallery": 1}

# Third-party top-level packages and the only modules allowed to import them (prefixes, as in
# LAYERS). A rule for a package nobody imports yet still holds for whoever adds it.
BACKEND_OWNERS: dict[str, tuple[str, ...]] = {
    "streamlit": ("ui", "pages", "app"),
    "open_clip": ("core.encoder.registry",),
    "timm": ("core.encoder.registry", "core.encoder.taps"),
    "safetensors": ("core.encoder.versions",),
    "chromadb": ("core.search.index",),
    "sqlite3": ("core.store",),
    "umap": ("core.measure.projection",),
    "faiss": ("core.search.nn",),  # nearest-neighbour methods (may not exist yet)
    "rtree": ("core.search.nn",),
    "psycopg": ("core.store",),
    "ray": ("core.gallery",),  # future: distributed ingest
    "playwright": ("core.measure.load",),  # the browser load benchmark
}

CLI_CHOICES = {  # (sub-command, option) -> the tuple in core.choices it must offer
    ("evaluate", "--split"): "EVAL_SPLITS",
    ("evaluate", "--relevance"): "RELEVANCE_SOURCES",
    ("evaluate", "--labels"): "LABEL_SETS",
    ("train", "--mode"): "TRAIN_MODES",
    ("project", "--method"): "PROJECTION_METHODS",
    ("map-job", "--method"): "PROJECTION_METHODS",
    ("eval-job", "--split"): "EVAL_SPLITS",
    ("eval-job", "--relevance"): "RELEVANCE_SOURCES",
    ("export-interactions", "--format"): "EXPORT_FORMATS",
    ("demo-data", "--set"): "DEMO_SETS",
}


# --- reading the source ----------------------------------------------------------------------


def module_name(path: Path) -> str:
    """`core/store/__init__.py` -> `core.store`; `core/studio.py` -> `core.studio`."""
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    """Every checked module and its file (tests/ excluded)."""
    paths = [p for d in SOURCE_DIRS for p in sorted((PROJECT / d).rglob("*.py"))]
    paths += [PROJECT / f for f in SOURCE_FILES]
    return {module_name(p): p for p in paths}


def _is_package(module: str) -> bool:
    return project_files()[module].name == "__init__.py"


def _imported_names(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    """Dotted names one import statement brings in: `from core.x import y` -> `core.x.y` when
    that module exists, else `core.x`; relative imports resolved against `module`'s package."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".")
        keep = len(package) - node.level + (1 if _is_package(module) else 0)
        base = ".".join([*package[:keep], *([base] if base else [])])
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        yield candidate if candidate in project_files() else base


def _resolve(name: str) -> str:
    """The longest project module that `name` (a dotted import) names."""
    parts = name.split(".")
    while parts and ".".join(parts) not in project_files():
        parts.pop()
    return ".".join(parts) or name


def imports_in(source: str, module: str) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) that `module`'s source imports anywhere:
    at module level, inside functions, under `if TYPE_CHECKING:`."""
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        relative = isinstance(node, ast.ImportFrom) and node.level > 0
        for name in _imported_names(node, module):
            if relative or name.split(".")[0] in PROJECT_PACKAGES:
                internal.add(_resolve(name))
            else:
                external.add(name.split(".")[0])
    internal.discard(module)
    return internal, external


@cache
def import_graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project edges, third-party imports) of every checked module."""
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in project_files().items():
        internal[module], external[module] = imports_in(path.read_text(), module)
    return internal, external


# --- the checks, as functions of a graph (so the self-test can feed them a made-up one) ------


def under(module: str, prefix: str) -> bool:
    """`prefix` names `module` itself or a package above it."""
    return module == prefix or module.startswith(prefix + ".")


def edges(graph: Graph) -> Iterator[tuple[str, str]]:
    return ((a, b) for a in sorted(graph) for b in sorted(graph[a]))


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components of more than one module (each one holds a cycle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_report(graph: Graph) -> list[str]:
    """Each cycle's members and the edges that close it."""
    lines = []
    for component in strongly_connected(graph):
        members = set(component)
        lines.append("cycle among " + ", ".join(component) + ":")
        lines += [f"  {a} -> {b}" for a, b in edges(graph) if a in members and b in members]
    return lines


def layer_of(module: str) -> int | None:
    """The layer of the longest prefix in LAYERS that names `module` (None: unplaced)."""
    if module in PACKAGE_MARKERS:
        return PACKAGE_MARKERS[module]
    matches = [(len(p), layer) for layer, prefixes in LAYERS for p in prefixes if under(module, p)]
    return max(matches)[1] if matches else None


def layer_violations(graph: Graph) -> list[str]:
    """Unplaced modules, and edges from a lower layer up to a higher one."""
    modules = set(graph) | {b for targets in graph.values() for b in targets}
    unplaced = sorted(m for m in modules if layer_of(m) is None)
    lines = [f"{m} matches no layer: add it to LAYERS" for m in unplaced]
    for a, b in edges(graph):
        low, high = layer_of(a), layer_of(b)
        if low is not None and high is not None and high > low:
            lines.append(f"{a} (layer {low}) -> {b} (layer {high})")
    return lines


def unowned_imports(external: Graph, owners: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Imports of an owned third-party package by a module that is not one of its owners."""
    return [
        f"{module} -> {package}"
        for module, package in edges(external)
        if package in owners and not any(under(module, p) for p in owners[package])
    ]


def fail_with(lines: Iterable[str], rule: str) -> None:
    lines = list(lines)
    assert not lines, f"{rule}:\n" + "\n".join(lines)


# --- the rules ---------------------------------------------------------------------------------


def test_the_source_is_read():
    internal, external = import_graphs()
    assert {"core.studio", "core.store", "core.__main__", "ui.resources", "app"} <= set(internal)
    assert "core.store.catalog" in internal["core.store"]  # from core.store.catalog import …
    assert "core.store" in internal["core.studio"]  # from core.store import Store (a name)
    assert "chromadb" in external["core.search.index"]


SNIPPET = """
from typing import TYPE_CHECKING
import numpy as np
if TYPE_CHECKING:
    from core.studio import Studio
def later():
    from core.measure import evaluation
    import chromadb.api
from ..store import Store
from .. import errors
"""


def test_imports_are_found_anywhere_and_resolved_to_modules():
    internal, external = imports_in(SNIPPET, "core.learn.tower")

    assert internal == {"core.studio", "core.measure.evaluation", "core.store", "core.errors"}
    assert external == {"typing", "numpy", "chromadb"}


def test_no_import_cycles():
    internal, _ = import_graphs()
    fail_with(
        cycle_report(internal), "import cycles (DESIGN.md: no cycles, not even TYPE_CHECKING)"
    )


def test_core_never_imports_streamlit():
    _, external = import_graphs()
    fail_with(
        (f"{m} -> streamlit" for m, p in edges(external) if under(m, "core") and p == "streamlit"),
        "core imports streamlit",
    )


def test_each_backend_has_one_owner():
    _, external = import_graphs()
    fail_with(unowned_imports(external, BACKEND_OWNERS), "backend imported outside its owner")


def test_layers_point_one_way():
    internal, _ = import_graphs()
    fail_with(layer_violations(internal), "imports against the layers (see LAYERS)")


def test_the_checker_reports_a_cycle_an_upward_edge_a_stray_backend_and_an_unplaced_module():
    graph = {
        "core.store.a": {"core.store.b"},
        "core.store.b": {"core.store.c"},
        "core.store.c": {"core.store.a"},  # a -> b -> c -> a
        "core.errors": {"core.studio"},  # foundation reaching up to the facade
        "core.studio": {"core.store.a"},
        "core.mystery": set(),
    }
    external = {"core.studio": {"chromadb", "numpy"}, "core.search.index": {"chromadb"}}

    assert strongly_connected(graph) == [["core.store.a", "core.store.b", "core.store.c"]]
    assert "  core.store.c -> core.store.a" in cycle_report(graph)
    assert layer_violations(graph) == [
        "core.mystery matches no layer: add it to LAYERS",
        "core.errors (layer 0) -> core.studio (layer 3)",
    ]
    assert unowned_imports(external, BACKEND_OWNERS) == ["core.studio -> chromadb"]
    assert layer_of("core.gallery.images") == 1 and layer_of("core.gallery.ingest") == 2
    assert layer_of("core") == 0 and layer_of("core.gallery") == 1 and layer_of("core.x") is None


def test_every_error_in_core_derives_from_the_root_error():
    import core
    from core.errors import LookalikeError

    strays = []
    for info in pkgutil.walk_packages(core.__path__, "core."):
        if info.name == "core.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            defined_here = cls.__module__ == info.name
            if defined_here and name.endswith("Error") and not issubclass(cls, LookalikeError):
                strays.append(f"{info.name}.{name} -> not a LookalikeError")
    fail_with(strays, "errors outside the root")


# --- the command line ---------------------------------------------------------------------------


def run_python(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The project's interpreter in a fresh process, from the project root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT,
        env={**os.environ, "LOOKALIKE_ENCODER": "tiny-test", **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def option_choices(parser: argparse.ArgumentParser) -> dict[tuple[str, str], tuple[str, ...]]:
    """(sub-command, option) -> its `choices`, for every option that has them."""
    found = {}
    assert parser._subparsers is not None
    for group_action in parser._subparsers._group_actions:
        assert isinstance(group_action, argparse._SubParsersAction)
        for command, sub in group_action.choices.items():
            for action in sub._actions:
                for option in action.option_strings if action.choices else ():
                    found[(command, option)] = tuple(action.choices)
    return found


def test_the_command_line_builds_its_parser_without_torch():
    code = "import sys; from core.__main__ import build_parser; build_parser(); "
    code += "print(json.dumps('torch' in sys.modules))"
    done = run_python("-c", "import json; " + code)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) is False, "importing core.__main__ imported torch"


def test_the_command_line_offers_the_choices_of_core():
    import core.choices
    from core.__main__ import build_parser

    offered = option_choices(build_parser())

    for (command, option), name in CLI_CHOICES.items():
        assert offered.get((command, option)) == getattr(core.choices, name), (command, option)


@pytest.mark.parametrize(
    "args",
    [("evaluate", "--model", "nope"), ("activate", "nope")],
    ids=["evaluate-unknown-model", "activate-unknown-version"],
)
def test_a_user_mistake_prints_one_sentence_not_a_traceback(tmp_path: Path, args: tuple[str, ...]):
    data = tmp_path / "empty"
    data.mkdir()

    done = run_python("-m", "core", *args, "--data-dir", str(data))

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr
