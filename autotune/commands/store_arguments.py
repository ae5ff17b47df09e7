"""The --storage/--study arguments that `best`, `export`, `report` and `dashboard` share."""

from __future__ import annotations

import argparse

from autotune.errors import UserError
from autotune.spec import DEFAULT_STORAGE
from autotune.store.views import StudyView, load_views, open_storage, redact_url, store_selection


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL", help=f"Optuna storage URL (default: the spec's, else {DEFAULT_STORAGE})")
    parser.add_argument("--study", metavar="FILE", help="a study spec (TOML): only its studies, and its storage")


def storage_url(args: argparse.Namespace) -> str:
    """The store that --storage/--study name."""
    return store_selection(args.storage, args.study)[0]


def studies_from_args(args: argparse.Namespace) -> tuple[str, list[StudyView]]:
    """(storage URL, the tuning studies it holds that --study selects); none is an error."""
    url, keep = store_selection(args.storage, args.study)
    views = load_views(open_storage(url), keep)
    if not views:
        raise UserError(f"the store {redact_url(url)} holds no tuning studies yet; run `autotune tune --study FILE` first")
    return url, views
