"""Where autotune imports: at the top of each module, except what is deferred on purpose.

An import inside a function is kept only for a heavy or optional package (torch and the
kernels and schedulers that load it, Optuna, SQLAlchemy, plotly, the optional extras) or
to break an import cycle; a module that keeps one says why in a comment above its first
definition. The modules that the command line, the benchmark's request and the early
lock check import stay free of the heavy packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autotune"
# Imported inside functions on purpose: heavy to load, or optional extras.
DEFERRED = {
    "torch", "kernels", "schedulers", "optuna", "sqlalchemy", "plotly",
    "optuna_dashboard", "kernel_tuner", "xlstm", "mlstm_kernels",
}
# Project modules a module imports inside a function, and why.
DEFERRED_HERE = {
    ("autotune/bench/main.py", "autotune.bench.env"): "loads torch",
    ("autotune/bench/main.py", "autotune.bench.measure"): "loads torch",
    ("autotune/store/fingerprint.py", "autotune.bench.env"): "loads torch",
    ("autotune/spec.py", "autotune.space"): "loads Optuna",
    ("autotune/replay/loading.py", "autotune.sweep"): "autotune.sweep imports the replay package",
}
# kernels and schedulers load torch: a module that imports one at its top has paid for all.
TORCH = {"torch", "kernels", "schedulers"}
HEAVY = ("torch", "optuna", "sqlalchemy", "plotly", "ray", "kernel_tuner", "optuna_dashboard")
LIGHT_MODULES = (
    "autotune.cli", "autotune.spec", "autotune.store.preflight", "autotune.store.views",
    "autotune.bench.main", "autotune.trials", "autotune.defaults", "autotune.report",
    "autotune.export", "autotune.verdict", "autotune.workers",
)


def _local_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of everything imported inside a function body; `from a import b`
    gives a.b, which is a module or a name in one."""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return sorted(set(found))


def _loaded_at_the_top(tree: ast.Module) -> set[str]:
    """The deferrable packages the module imports at its top (torch standing for kernels
    and schedulers too)."""
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    roots &= DEFERRED
    return roots | TORCH if roots & TORCH else roots


def _deferred(rel: str, dotted: str, at_top: set[str]) -> bool:
    parts = dotted.split(".")
    prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    if parts[0] in DEFERRED:
        return parts[0] not in at_top
    return any((rel, prefix) in DEFERRED_HERE for prefix in prefixes)


def _says_why(tree: ast.Module, source: str) -> bool:
    """A comment that mentions importing, before the module's first definition."""
    first = min((n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))),
                default=len(source.splitlines()) + 1)
    return any(line.lstrip().startswith("#") and "import" in line
               for line in source.splitlines()[:first - 1])


def _violations(root: Path, package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        local = _local_imports(tree)
        at_top = _loaded_at_the_top(tree)
        for line, dotted in local:
            if not _deferred(rel, dotted, at_top):
                problems.append(f"{rel}:{line} imports {dotted} inside a function; move it to the top")
        if local and not _says_why(tree, source):
            problems.append(f"{rel}: defers imports without a comment above its first definition saying why")
    return problems


def test_imports_inside_functions_are_only_the_deferred_ones():
    assert _violations(ROOT, PACKAGE) == []


def test_the_scan_finds_light_and_already_loaded_imports_and_a_missing_reason(tmp_path):
    package = tmp_path / "autotune"
    package.mkdir()
    (package / "ok.py").write_text("# torch is imported where it is used.\n\ndef f():\n    import torch\n")
    (package / "light.py").write_text("# json is imported where used\n\ndef f():\n    import json\n")
    (package / "silent.py").write_text("def f():\n    from kernels import XLSTM\n")
    (package / "method.py").write_text(
        "# heavy imports are deferred\n\nclass A:\n    def f(self):\n        from autotune.space import x\n")
    (package / "paid.py").write_text("import torch\n\n# kernels is imported where used\n\ndef f():\n    import kernels\n")
    assert _violations(tmp_path, package) == [
        "autotune/light.py:4 imports json inside a function; move it to the top",
        "autotune/method.py:5 imports autotune.space.x inside a function; move it to the top",
        "autotune/paid.py:6 imports kernels inside a function; move it to the top",
        "autotune/silent.py: defers imports without a comment above its first definition saying why",
    ]


def test_the_modules_that_start_commands_load_no_heavy_package():
    probe = subprocess.run([sys.executable, "-c", (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n")],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
