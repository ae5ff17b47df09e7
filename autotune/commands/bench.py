"""`autotune bench '<json>'`: the same process as `python -m autotune.bench`."""

from __future__ import annotations

import argparse

from autotune.bench.config import BenchRequest
from autotune.bench.main import main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help="the config as one JSON object (or '-' / nothing: read it from stdin); "
        f"fields: {', '.join(BenchRequest.field_names())}",
    )


def run(args: argparse.Namespace) -> int:
    return main([args.config] if args.config is not None else [])
