"""Errors a user can cause and fix: printed as one line naming the fix, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; `autotune` prints it as one line, never as a traceback."""


def require_folder(path: Path, what: str, flag: str) -> None:
    """Refuse a file whose folder does not exist, rather than create folders from a typo."""
    folder = path.expanduser().parent
    if not folder.is_dir():
        raise UserError(
            f"the folder {folder} of the {what} does not exist; create it first "
            f"(mkdir -p {folder}) or pass another {flag}"
        )


def file_mode() -> int:
    """The mode a plain open() would give a new file: 0666 less the umask (0644 usually)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


POSTGRES_EXTRA = "pip install 'xlstm-autotune[postgres]'"


def missing_driver(display_url: str, backend: str, module: str | None) -> str:
    """The message for a store whose database driver is not installed: what to install."""
    if backend == "postgresql":
        fix = f"install it with: {POSTGRES_EXTRA}"
    else:
        fix = "install the SQLAlchemy driver for this database"
    what = f"the Python driver {module!r}" if module else "its Python driver"
    return f"the store {display_url} needs {what}, which is not installed; {fix}"
