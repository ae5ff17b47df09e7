"""The command line's layout: every `autotune` command is a module of autotune.commands,
and only the command layer (and the stand-alone `python -m` tools) parses arguments."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autotune"
# Tools run as `python -m MODULE`, not as `autotune` commands: each keeps its own parser.
STAND_ALONE = {
    "autotune/compare_official_profile.py",
    "autotune/replay/heldout.py",
    "autotune/replay/overhead.py",
    "autotune/replay/tuning.py",
}
BUILDS_A_PARSER = re.compile(r"\bArgumentParser\(")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_a_module_of_autotune_commands(name):
    module_name, help_text = COMMANDS[name]
    assert module_name.startswith("autotune.commands."), f"`autotune {name}` lives in {module_name}"
    assert (PACKAGE / "commands" / (module_name.rsplit(".", 1)[1] + ".py")).is_file()
    assert help_text
    module = importlib.import_module(module_name)
    assert callable(getattr(module, "add_arguments", None)) and callable(getattr(module, "run", None))


def _parsers_outside_the_command_layer() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("autotune/commands/") or rel == "autotune/cli.py" or rel in STAND_ALONE:
            continue
        if BUILDS_A_PARSER.search(path.read_text(encoding="utf-8")):
            found.append(rel)
    return found


def test_only_the_command_layer_and_stand_alone_tools_build_an_argument_parser():
    assert _parsers_outside_the_command_layer() == []
    # the exemptions stay true: each is a `python -m` tool with a parser of its own
    for rel in STAND_ALONE:
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert BUILDS_A_PARSER.search(text) and 'if __name__ == "__main__":' in text, rel


def test_the_grep_finds_a_parser_in_a_domain_module(tmp_path, monkeypatch):
    domain = tmp_path / "autotune"
    (domain / "commands").mkdir(parents=True)
    (domain / "commands" / "x.py").write_text("import argparse\nargparse.ArgumentParser()\n")
    (domain / "sweep.py").write_text("import argparse\nparser = argparse.ArgumentParser(prog='x')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", domain)
    assert _parsers_outside_the_command_layer() == ["autotune/sweep.py"]


def test_the_bench_command_loads_neither_plotly_nor_ray():
    probe = subprocess.run([sys.executable, "-c", (
        "import sys, importlib\n"
        "from autotune.cli import COMMANDS\n"
        "importlib.import_module(COMMANDS['bench'][0])\n"
        "print([m for m in ('plotly', 'ray', 'optuna_dashboard', 'kernel_tuner') if m in sys.modules])\n")],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
