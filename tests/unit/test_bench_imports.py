"""Benchmarks import the product lazily, inside functions, so a renamed module breaks them only
after an hour of a benchmark's run. Every `from ml... import name` in bench/ must resolve now."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def product_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ml", "serving"):
                found += [(path.name, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize(("bench", "module", "name"), product_imports())
def test_bench_imports_of_the_product_resolve(bench, module, name):
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), (
        f"{bench}: `from {module} import {name}` no longer resolves")
