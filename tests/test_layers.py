"""The package's layers only point down, and its modules import each other in no circle but one.

Every module under ``src/qfm_iqm`` is parsed with ``ast`` (no import runs) and every ``qfm_iqm`` import
it makes, at the top, inside a function or under ``TYPE_CHECKING``, is checked against :data:`LAYERS`
(docs/architecture.md draws the same picture).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qfm_iqm"

# Lowest first. A module may import modules of its own layer and of the layers before it, never one after.
LAYERS: list[tuple[str, ...]] = [
    ("qfm_iqm.version", "qfm_iqm.utils"),  # base: version, file and checkpoint I/O, devices, processes
    ("qfm_iqm.data",),  # datasets, records, images, preprocessing, degradations
    ("qfm_iqm.models",),  # the network as nn.Modules, and the closed-form regressors
    ("qfm_iqm.inference",),  # checkpoints, score map, crops to scores, ONNX, speed steps
    ("qfm_iqm.evaluation",),  # measuring: metrics, conformal calibration, degradation check
    ("qfm_iqm.training",),  # trainer, semantic noise, teachers, feature cache
    ("qfm_iqm.api", "qfm_iqm.metric", "qfm_iqm.scoring", "qfm_iqm.report", "qfm_iqm"),  # the public API
    ("qfm_iqm.experiments",),  # protocol, baselines, benchmark: what trains, evaluates and times
    ("qfm_iqm.cli",),  # the qfm-iqm command
]
# The one circle allowed: the dataset registry imports the dataset modules, which register themselves in it.
ALLOWED_CIRCLES = [{"qfm_iqm.data.registry", *(f"qfm_iqm.data.{name}" for name in (
    "csiq", "generic", "kadid10k", "koniq10k", "live", "livec", "livefb", "spaq", "tid2013"))}]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """The ``qfm_iqm`` modules ``name`` imports, with line numbers (``from pkg import sub`` names ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            found += [(target, node.lineno) for target in subs or [base]]
    return [(target, line) for target, line in found if target == "qfm_iqm" or target.startswith("qfm_iqm.")]


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer a module belongs to (its longest matching prefix)."""
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return max(matches)[1]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _names_from_packages(path: Path) -> list[tuple[str, str, int]]:
    """``(package, name, line)`` of every ``from qfm_iqm... import name`` in ``path`` whose ``name`` is no module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("qfm_iqm"):
            found += [(node.module, alias.name, node.lineno) for alias in node.names
                      if f"{node.module}.{alias.name}" not in MODULES]
    return found


def test_every_module_is_in_a_layer_and_every_import_resolves() -> None:
    unknown = [f"{name}:{line} imports {target}" for name, targets in GRAPH.items() for target, line in targets
               if target not in MODULES]
    assert not unknown, "imports of modules that do not exist:\n" + "\n".join(unknown)
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("folder", ["src", "tests", "scripts"])
def test_names_imported_from_a_package_exist(folder: str) -> None:
    """``from qfm_iqm.x import name``: ``name`` is a submodule of ``x`` or named in its source (a moved
    module or function leaves no name behind)."""
    missing = []
    for path in sorted((PACKAGE.parents[1] / folder).rglob("*.py")):
        for package, name, line in _names_from_packages(path):
            source = MODULES.get(package)
            if source is None or not re.search(rf"\b{name}\b", source.read_text(encoding="utf-8")):
                missing.append(f"{path.relative_to(PACKAGE.parents[1])}:{line}: from {package} import {name}")
    assert not missing, "\n".join(missing)


def test_no_import_points_up() -> None:
    upward = [f"{name}:{line} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for name, targets in GRAPH.items() for target, line in targets if layer_of(target) > layer_of(name)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _circles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target, _ in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_no_import_circle_but_the_dataset_registry() -> None:
    circles = [sorted(c) for c in _circles() if c not in ALLOWED_CIRCLES]
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_evaluation_measures_only() -> None:
    forbidden = ("qfm_iqm.training", "qfm_iqm.experiments", "qfm_iqm.api", "qfm_iqm.cli")
    offenders = [f"{name}:{line} imports {target}" for name, targets in GRAPH.items()
                 if name.startswith("qfm_iqm.evaluation") for target, line in targets if target.startswith(forbidden)]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("source, target, upward", [
    ("qfm_iqm.evaluation.metrics", "qfm_iqm.training.trainer", True),
    ("qfm_iqm.models.qfm", "qfm_iqm.inference.checkpoint", True),
    ("qfm_iqm.inference.graph", "qfm_iqm", True),
    ("qfm_iqm.training.trainer", "qfm_iqm.evaluation.metrics", False),
    ("qfm_iqm.cli.main", "qfm_iqm.data.registry", False),
])
def test_the_check_tells_up_from_down(source: str, target: str, upward: bool) -> None:
    assert (layer_of(target) > layer_of(source)) is upward
