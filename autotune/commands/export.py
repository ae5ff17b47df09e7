"""`autotune export`: write the runner defaults file from the store (autotune.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autotune.commands.store_arguments import add_store_arguments, studies_from_args
from autotune.defaults import DEFAULT_PATH
from autotune.export import write_defaults
from autotune.names import KNOBS
from autotune.verdict import plural


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument("--out", metavar="FILE", default=str(DEFAULT_PATH), help=f"defaults file to write (default: {DEFAULT_PATH})")
    parser.add_argument(
        "--unconfirmed", action="store_true",
        help="for studies without a confirmation (an interrupted run), export their best trial "
        "instead of keeping the baseline",
    )
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the entries of an existing --out file for other shapes/devices/backends",
    )


def run(args: argparse.Namespace) -> int:
    _, views = studies_from_args(args)
    out = Path(args.out)
    written = write_defaults(views, out, allow_unconfirmed=args.unconfirmed, merge=args.merge)
    entries = written.document["entries"]
    rows = sum(len(e["table"]) for e in entries)
    print(f"wrote {out}: {plural(len(entries), 'entry', 'entries')}, {plural(rows, 'context row')}")
    for entry in written.fresh["entries"]:
        for row in entry["table"]:
            knobs = " ".join([*(f"{k}={row['config'][k]}" for k in KNOBS),
                              *(f"{k}={v}" for k, v in row.get("kernel", {}).items())])
            print(f"  {entry['shape']}/{entry['device_kind']}/{entry['backend']}/{entry['dtype']} "
                  f"L{row['context']}{'' if row.get('batch', 1) == 1 else ' B' + str(row['batch'])}: {knobs} "
                  f"({row['source']}, trial #{row['trial']})")
    for note in written.notes:
        print(f"note: {note}")
    return 0
