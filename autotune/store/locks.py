"""The locks of a store: one writer per SQLite file (WriterLock), and named locks
shared by every tuner of a server store (NamedLocks).

Several tuners (processes, machines, and the per-GPU threads of one tuner) work on one
study. A few steps must not interleave: proposing a config (a sampler reads the study,
picks a free config and stores it; two at once could pick the same), recovering stale
trials (two workers could queue one config twice), creating a study, and confirming.

On a server database (PostgreSQL, MySQL) a lock is a row of the table
`autotune_locks`, held with SELECT ... FOR UPDATE in a transaction on a connection of
its own. The database ends a dead worker's connection and with it the lock, so a kill -9
never leaves a lock behind: at once when the worker's host closes the socket, and on
PostgreSQL within about a minute when the whole host is gone (the server probes lock
connections with TCP keepalives instead of the system default of two hours). On SQLite
the writer lock already keeps other processes out; only this process's threads are
serialised.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa

from autotune.store.preflight import busy_message, lock_path
from autotune.store.storage import StoreError

TABLE = "autotune_locks"
_metadata = sa.MetaData()
_locks = sa.Table(TABLE, _metadata, sa.Column("name", sa.String(512), primary_key=True))


class WriterLock:
    """One tuner per SQLite file: an exclusive `flock` on `<db>-lock`, holding the
    owner's pid. The kernel drops the lock when the owner dies (even by kill -9), so
    a stale lock file never blocks a resume."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(busy_message(self.db_path, holder)) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# PostgreSQL server settings of the lock connections: a dead peer is noticed after
# 30 s idle + 3 probes 10 s apart.
_PG_KEEPALIVES = "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"


def _lock_engine(url: sa.engine.URL) -> sa.engine.Engine:
    """Connections for the locks only, apart from Optuna's pool (a lock may be held for a
    whole confirmation while the same process keeps writing trials)."""
    libpq = url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2")
    connect_args = {"options": _PG_KEEPALIVES} if libpq else {}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


class NamedLocks:
    """`with locks.hold("study:NAME"): ...` runs the block while no other holder of
    that name, in this process or any other tuner of the store, runs its own."""

    def __init__(self, url: sa.engine.URL | str | None):
        """url: the store's database for a shared (server) store; None for SQLite."""
        self._engine = _lock_engine(sa.engine.make_url(url)) if url is not None else None
        self._guard = threading.Lock()
        self._local: dict[str, threading.Lock] = {}
        self._known: set[str] = set()
        if self._engine is not None:
            self._create_table()

    @classmethod
    def for_storage(cls, storage, *, shared: bool) -> "NamedLocks":
        return cls(storage.engine.url if shared else None)

    def _create_table(self) -> None:
        for attempt in range(2):
            try:
                _metadata.create_all(self._engine, checkfirst=True)
                return
            except sa.exc.SQLAlchemyError as exc:
                if attempt == 0:
                    continue  # another worker created it at the same moment; it exists now
                detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                raise StoreError(f"cannot create the table {TABLE} the workers coordinate through: {detail}; "
                                 "the database user needs the right to create tables") from None

    def _local_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._local.setdefault(name, threading.Lock())

    def _ensure_row(self, name: str) -> None:
        if name in self._known:
            return
        try:
            with self._engine.begin() as conn:
                if conn.execute(sa.select(_locks.c.name).where(_locks.c.name == name)).first() is None:
                    conn.execute(_locks.insert().values(name=name))
        except sa.exc.IntegrityError:
            pass  # inserted by another worker in between
        self._known.add(name)

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._local_lock(name):
            if self._engine is None:
                yield
                return
            self._ensure_row(name)
            with self._engine.connect() as conn, conn.begin():
                conn.execute(sa.select(_locks.c.name).where(_locks.c.name == name).with_for_update()).first()
                yield
