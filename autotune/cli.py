"""`autotune` command line: one subcommand per module.

Each command is a module of autotune.commands with `add_arguments(parser)` and
`run(args) -> int`; it is imported only when its command runs, so `autotune bench` never
pays for plotly or Ray. `tune` first checks its store's writer lock with the standard
library alone (autotune.store.preflight), so a busy store is refused at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from autotune.errors import UserError
from autotune.store.preflight import tune_refusal

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tune": ("autotune.commands.tune", "run a tuning study from a TOML spec"),
    "bench": ("autotune.commands.bench", "measure one config; prints one JSON result line"),
    "best": ("autotune.commands.best", "show the best config per context length"),
    "export": ("autotune.commands.export", "write the runner defaults file"),
    "report": ("autotune.commands.report", "write a self-contained HTML report"),
    "dashboard": ("autotune.commands.dashboard", "serve optuna-dashboard on the store"),
    "generate": ("autotune.commands.generate", "generate text with the exported defaults"),
    "sweep": ("autotune.commands.sweep", "measure every valid config into a surface file"),
    "replay": ("autotune.commands.replay", "compare strategies on a recorded surface"),
    "compare-official": ("autotune.commands.compare_official", "measure against the official xLSTM kernels"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _store_arguments(argv: list[str]) -> dict[str, str | None]:
    """The --study and --storage of a command line, before its command's module loads."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--study")
    peek.add_argument("--storage")
    args, _ = peek.parse_known_args(argv)
    return {"study": args.study, "storage": args.storage}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    if name == "tune":
        refusal = tune_refusal(**_store_arguments(rest))
        if refusal:
            print(f"autotune tune: error: {refusal}", file=sys.stderr)
            return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"autotune: the '{name}' command is not available in this build", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"autotune {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"autotune {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autotune {name}: interrupted", file=sys.stderr)
        return 130
