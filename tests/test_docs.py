"""The README and docs/ point at things that exist: links, repository paths, commands and flags."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from autotune.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files the commands write; the docs name them before they exist.
GENERATED = {"studies/autotune.db", "studies/defaults.json", "studies/report.html"}
REPO_DIRS = ("autotune", "kernels", "schedulers", "studies", "tests", "docs")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S)


def test_docs_pages_exist_and_readme_is_a_short_guide():
    names = {p.name for p in PAGES}
    for page in ("benchmark.md", "schedulers.md", "kernels.md", "strategies.md", "performance.md", "architecture.md"):
        assert page in names
    assert (ROOT / "README.md").stat().st_size <= 16_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or page.name != "README.md"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: link to missing {link}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: link to missing heading {link}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_named_exists(page):
    text = page.read_text()
    pattern = r"`((?:%s)/[\w./-]+)`" % "|".join(REPO_DIRS)
    for path in re.findall(pattern, text):
        if path in GENERATED:
            continue
        assert (ROOT / path).exists(), f"{page.name} names {path}, which is not in the repository"


def _autotune_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split("#")[0].strip()
                if part.startswith("autotune "):
                    commands.append(shlex.split(part)[1:])
    for inline in re.findall(r"`(autotune [a-z-]+[^`]*)`", text):
        commands.append(shlex.split(inline)[1:])
    return commands


def _flags(command: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_readme_command_and_flag_exists():
    commands = _autotune_commands()
    assert ["tune", "--study", "studies/cpu-quick.toml"] in commands
    flags = {}
    for argv in commands:
        name = argv[0]
        assert name in COMMANDS, f"README shows `autotune {name}`, which is no command"
        if name not in flags:
            flags[name] = _flags(name)
        for word in argv[1:]:
            flag = word.strip("[]").split("=")[0]
            if flag.startswith("--"):
                assert flag in flags[name], f"README shows `autotune {name} {flag}`, which it does not take"
            elif name == "tune" and word.endswith(".toml"):
                assert (ROOT / word).exists()


def test_readme_test_commands_use_registered_markers():
    text = (ROOT / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for marker in re.findall(r'pytest[^\n]*-m "not (\w+)"', text):
        assert f'"{marker}:' in pyproject


def test_every_flag_the_readme_names_belongs_to_a_command():
    text = (ROOT / "README.md").read_text()
    known = set().union(*(_flags(name) for name in ("tune", "best", "export", "report", "dashboard", "generate")))
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    named = {flag for span in spans for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", span)}
    assert "--unconfirmed" in named
    assert named <= known, f"README names flags no command takes: {sorted(named - known)}"
