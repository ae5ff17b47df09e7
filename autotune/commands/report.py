"""`autotune report`: write the HTML report of the store (autotune.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autotune.commands.store_arguments import add_store_arguments, studies_from_args
from autotune.report import DEFAULT_OUT, write_report
from autotune.store.views import redact_url
from autotune.verdict import plural


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument("--out", metavar="FILE", default=str(DEFAULT_OUT), help=f"HTML file to write (default: {DEFAULT_OUT})")


def run(args: argparse.Namespace) -> int:
    url, views = studies_from_args(args)
    out = Path(args.out)
    write_report(views, out, source=redact_url(url))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {plural(len(views), 'study', 'studies')}); open it in a browser")
    return 0
