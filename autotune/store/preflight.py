"""Checks `autotune tune` makes before its heavy imports, so a refusal is immediate.

Importing the tuner (torch, Optuna, SQLAlchemy, the strategies) takes seconds, tens of
seconds on a loaded machine. A second tuner on a SQLite store is refused anyway once
it tries the writer lock; this module tries the same lock first, with the standard
library only, and the tuner takes it for real later (autotune.store.locks.WriterLock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import tomllib
from pathlib import Path

from autotune.spec import DEFAULT_STORAGE

_SQLITE = re.compile(r"^sqlite(\+\w+)?:///(?P<path>[^?]+)")


def lock_path(db_path: Path) -> Path:
    """The writer lock of a SQLite store: `<db>-lock` beside `-journal` and `-wal`."""
    return db_path.with_name(db_path.name + "-lock")


def busy_message(db_path: Path, holder: str) -> str:
    who = f" ({holder})" if holder else ""
    return (f"another tuner{who} is writing to {db_path}; SQLite takes one tuner at a time: wait for "
            "it to finish, stop it, or tune into another --storage (several workers need a server "
            "database such as PostgreSQL)")


def _sqlite_path(study: str | None, storage: str | None) -> Path | None:
    """The SQLite file a tune of spec `study` into `storage` would write, or None (another
    store, or a spec this quick look cannot read: the full run then reports what is wrong)."""
    url = storage
    if url is None:
        if not study:
            return None
        try:
            url = tomllib.loads(Path(study).read_text(encoding="utf-8")).get("storage", DEFAULT_STORAGE)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
    match = _SQLITE.match(url) if isinstance(url, str) else None
    if not match or match["path"] == ":memory:":
        return None
    return Path(match["path"]).expanduser().absolute()


def tune_refusal(study: str | None, storage: str | None) -> str | None:
    """Why a tune of spec `study` into `storage` (None: the spec's) cannot start now (its
    store's writer lock is held), or None."""
    db_path = _sqlite_path(study, storage)
    if db_path is None:
        return None
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except OSError:
        return None  # no lock file yet: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        return busy_message(db_path, holder)
    finally:
        os.close(fd)  # closing drops a lock taken here
    return None
