"""Import layering: a module may import its own top-level component or a strictly lower layer, never upward.

Each module is placed by its first component under ``edgeprune`` (``edgeprune.pruning.recover`` → ``pruning``).
Every import in every file counts — module level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module("edgeprune....")`` with a literal name — because a deferred import is still a dependency.
``edgeprune/__init__.py`` is exempt: it is the lazy API facade over everything. ``from edgeprune import X`` resolves to
``edgeprune.X`` when X is a module, and to the defining module (the facade's ``_EXPORTS``) when X is an API name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "edgeprune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Top to bottom. A component may import itself or anything in a later row, nothing in its own row or above.
LAYERS: list[set[str]] = [
    {"cli"},
    {"fleet"},
    {"pipeline"},
    {"report"},
    {"search"},
    {"exporting", "genai", "quantization", "pruning", "packaging"},
    {"budgets", "evaluate", "agent"},
    {"profiling", "models"},
    {"runtime", "files", "data", "int8", "options", "provenance"},
    # device_profiles holds only the shipped YAMLs (read by devices.py as package data, never imported).
    {"devices", "quiet", "device_profiles"},
    {"errors"},
]
LAYER_OF = {component: depth for depth, row in enumerate(LAYERS) for component in row}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    """Whether ``name`` (dotted, starting with ``edgeprune``) is a module or package in the source tree."""
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _facade_exports() -> dict[str, str]:
    """The facade's ``_EXPORTS`` table (API name → defining module), read without importing the package."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


EXPORTS = _facade_exports()


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` statement reads from, or None when it is outside the package."""
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every ``edgeprune.*`` module that ``source`` (the text of ``module``) imports anywhere, with line numbers."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, is_package, node)
            if source is None:
                continue
            for alias in node.names:
                if _is_module(f"{source}.{alias.name}"):  # from edgeprune import runtime; from . import channels
                    found.append((node.lineno, f"{source}.{alias.name}"))
                elif source == PACKAGE and alias.name in EXPORTS:  # from edgeprune import load_model
                    found.append((node.lineno, EXPORTS[alias.name]))
                else:  # a name defined in ``source`` (for the facade: __version__ or "*", a dependency on it)
                    found.append((node.lineno, source))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def _component(name: str) -> str:
    return name.split(".")[1]


def _source_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_component_is_in_the_layer_table() -> None:
    components = {_component(_module_name(p)) for p in _source_files() if p != ROOT / "__init__.py"}
    missing = sorted(components - LAYER_OF.keys())
    assert not missing, (f"edgeprune components not in the layer table: {missing} — add each to LAYERS in "
                         f"tests/test_layering.py at the layer where it belongs")


def test_imports_only_go_down_the_layers() -> None:
    violations: list[str] = []
    unlisted: set[str] = set()
    for path in _source_files():
        if path == ROOT / "__init__.py":
            continue  # the lazy API facade
        module = _module_name(path)
        here = _component(module)
        if here not in LAYER_OF:
            unlisted.add(here)
            continue
        where = path.relative_to(ROOT.parent)
        for line, target in _imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            if target == PACKAGE:
                violations.append(f"{where}:{line}: {module} imports the edgeprune facade; import the defining "
                                  f"module instead")
                continue
            there = _component(target)
            if there == here:
                continue
            if there not in LAYER_OF:
                unlisted.add(there)
            elif LAYER_OF[there] <= LAYER_OF[here]:
                relation = "same layer" if LAYER_OF[there] == LAYER_OF[here] else "upward"
                violations.append(f"{where}:{line}: {module} ({here}, layer {LAYER_OF[here]}) imports {target} "
                                  f"({there}, layer {LAYER_OF[there]}) — {relation}")
    assert not unlisted, (f"modules not in the layer table: {sorted(unlisted)} — add them to LAYERS in "
                          f"tests/test_layering.py")
    assert not violations, f"{len(violations)} layering violation(s):\n" + "\n".join(violations)


def test_the_checker_sees_deferred_relative_and_dynamic_imports() -> None:
    """The checker itself: imports inside functions, relative, facade and import_module imports are all resolved."""
    source = ("from __future__ import annotations\n"
              "import numpy\n"
              "from edgeprune import runtime, load_model, __version__\n"
              "from . import channels\n"
              "from .recover import recover\n"
              "from ..models.plan import PruningPlan\n"
              "def f():\n"
              "    import edgeprune.pipeline\n"
              "    import importlib\n"
              "    return importlib.import_module('edgeprune.cli')\n")
    assert [name for _, name in _imports(source, "edgeprune.pruning.probe", False)] == [
        "edgeprune.runtime", "edgeprune.models.loading", "edgeprune", "edgeprune.pruning.channels",
        "edgeprune.pruning.recover", "edgeprune.models.plan", "edgeprune.pipeline", "edgeprune.cli"]
    assert [name for _, name in _imports("from . import recover\n", "edgeprune.pruning", True)] == [
        "edgeprune.pruning.recover"]
