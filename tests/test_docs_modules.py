"""Every dotted kernels./schedulers. name the docs give resolves to code, so that a moved
module or a renamed function cannot leave the docs pointing at nothing."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `kernels.registry.use_run(run)` -> kernels.registry.use_run
NAME = re.compile(r"`((?:kernels|schedulers)(?:\.[A-Za-z_]\w*)+)")


def _top_level_names(path: str) -> set[str]:
    tree = ast.parse(Path(path).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def resolves(dotted: str) -> bool:
    """The longest module prefix that exists, then attributes for the rest. A module whose
    optional dependency (Triton, Ray) is not installed is read, not imported."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            continue
        if spec is None:
            continue
        rest = parts[cut:]
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module or not spec.origin:
                return False
            return not rest or rest[0] in _top_level_names(spec.origin)
        for attr in rest:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_pattern_finds_names_and_resolving_can_fail():
    assert NAME.findall("see `kernels.registry.use_run(run)` and `schedulers.graphs`") == [
        "kernels.registry.use_run", "schedulers.graphs"]
    assert resolves("kernels.registry.use_run") and resolves("schedulers.graphs")
    assert not resolves("kernels.no_such_module") and not resolves("kernels.registry.no_such_name")
    # a module that needs Triton exists whether or not Triton is installed here
    assert resolves("kernels.triton_gemv.gemv") and not resolves("kernels.triton_gemv.no_such_name")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_kernels_and_schedulers_name_resolves(page):
    missing = sorted({name for name in NAME.findall(page.read_text()) if not resolves(name)})
    assert not missing, f"{page.name} names {', '.join(missing)}, which the code does not define"
