"""The import rules that keep the oracle independent and the method layers on public APIs, read
from the sources with ast (nothing is imported):

1. qkernels/reference.py, the NumPy oracle of docs/numerics.md, imports nothing from qkernels:
   a bug shared with the code under test could not be caught by it.
2. Nothing in the package imports qkernels.reference, except the qkernels/bench/ package, whose
   correctness checks are the oracle's business (the tests import it too, from outside).
3. qkernels.quant and qkernels.evaluate use public APIs only: no module or name with a leading
   underscore from elsewhere in qkernels (their own private helpers, quant._common, are theirs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qkernels"
REFERENCE = "qkernels.reference"
MAY_IMPORT_REFERENCE = {"qkernels.bench", REFERENCE}  # and the modules of the qkernels.bench package
PUBLIC_ONLY = ("qkernels.quant", "qkernels.evaluate")


def _module_name(path: Path) -> str:
    parts = ("qkernels",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(source: str, module: str, package: str) -> list[tuple[str, str | None, int]]:
    """(absolute module, imported name or None, line) for every import statement in `source`,
    relative imports resolved against `package` (the package `module` belongs to)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{module}:{node.lineno}: a relative import above the package")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found += [(target, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == REFERENCE:
            found.append((REFERENCE, None, node.lineno))  # importlib.import_module("qkernels.reference")
    return found


def _targets(module: str, name: str | None) -> list[str]:
    """What an import can bind: the module, and `module.name` (a submodule or an attribute)."""
    return [module] + ([f"{module}.{name}"] if name and name != "*" else [])


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        yield module, imports(path.read_text(encoding="utf-8"), module, _package_of(module, path))


SOURCES = dict(_sources())


def test_the_package_sources_are_found():
    assert {REFERENCE, "qkernels.bench", "qkernels.quant._common", "qkernels.evaluate.plots"} <= SOURCES.keys()


def test_reference_imports_nothing_from_qkernels():
    offending = [
        f"line {line}: {target}" for target, name, line in SOURCES[REFERENCE]
        if target == "qkernels" or target.startswith("qkernels.")
    ]
    assert not offending, f"qkernels/reference.py must stay independent of the package: {offending}"


def violations_of_reference_rule(sources: dict) -> list[str]:
    return [
        f"{module}:{line} imports {REFERENCE}" for module, found in sources.items()
        if module not in MAY_IMPORT_REFERENCE and not module.startswith("qkernels.bench.")
        for target, name, line in found if REFERENCE in _targets(target, name)
    ]


def test_only_the_bench_imports_the_reference():
    assert not violations_of_reference_rule(SOURCES)


def violations_of_public_rule(sources: dict) -> list[str]:
    problems = []
    for module, found in sources.items():
        own = next((p for p in PUBLIC_ONLY if module == p or module.startswith(p + ".")), None)
        if own is None:
            continue
        for target, name, line in found:
            if not (target == "qkernels" or target.startswith("qkernels.")) or target == own or target.startswith(own + "."):
                continue
            private = [part for part in target.split(".") + [name or ""] if part.startswith("_") and part != "__future__"]
            if private:
                problems.append(f"{module}:{line} uses the private {_targets(target, name)[-1]}")
    return problems


def test_quant_and_evaluate_use_public_apis_only():
    assert not violations_of_public_rule(SOURCES)


@pytest.mark.parametrize(
    "module, path, source, reference_rule, public_rule",
    [
        ("qkernels.quant.x", "x.py", "from .. import reference", 1, 0),
        ("qkernels.quant.x", "x.py", "from ..reference import unpack", 1, 0),
        ("qkernels.ops", "ops.py", "import qkernels.reference as ref", 1, 0),
        ("qkernels.ops", "ops.py", "from qkernels import reference", 1, 0),
        ("qkernels.ops", "ops.py", "from .reference import pack_int4", 1, 0),
        ("qkernels.ops", "ops.py", "importlib.import_module('qkernels.reference')", 1, 0),
        ("qkernels.bench", "__init__.py", "from qkernels import reference", 0, 0),
        ("qkernels.bench.layers", "layers.py", "from qkernels import reference", 0, 0),
        ("qkernels.benchmarks", "benchmarks.py", "from qkernels import reference", 1, 0),
        ("qkernels.quant", "__init__.py", "from .. import reference", 1, 0),
        ("qkernels.quant.x", "x.py", "from .._tensors import is_torch", 0, 1),
        ("qkernels.evaluate.x", "x.py", "from ..torch.model import _linear_weight", 0, 1),
        ("qkernels.evaluate.x", "x.py", "import qkernels._native", 0, 1),
        ("qkernels.quant.x", "x.py", "from ._common import float_array", 0, 0),
        ("qkernels.quant.x", "x.py", "from ..weights import QuantizedWeight", 0, 0),
        ("qkernels.ops", "ops.py", "from ._tensors import float_buffer", 0, 0),
    ],
)
def test_the_rules_catch_what_they_forbid(module, path, source, reference_rule, public_rule):
    """The checks above are not vacuous: each forbidden spelling is caught, the allowed ones are not."""
    package = module if path == "__init__.py" else module.rpartition(".")[0]
    sources = {module: imports(source, module, package)}
    assert len(violations_of_reference_rule(sources)) == reference_rule
    assert len(violations_of_public_rule(sources)) == public_rule
