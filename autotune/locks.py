"""Named locks shared by every tuner of one store.

Several tuners (processes, machines, and the per-GPU threads of one tuner) work on one
study. A few steps must not interleave: proposing a config (a sampler reads the study,
picks a free config and stores it; two at once could pick the same), recovering stale
trials (two workers could queue one config twice), creating a study, and confirming.

On a server database (PostgreSQL, MySQL) a lock is a row of the table
`autotune_locks`, held with SELECT ... FOR UPDATE in a transaction on its own
connection. The database drops a dead worker's connection and with it the lock, so a
kill -9 never leaves a lock behind. On SQLite the writer lock (autotune.store) already
keeps other processes out; only this process's threads are serialised.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

TABLE = "autotune_locks"
_metadata = sa.MetaData()
_locks = sa.Table(TABLE, _metadata, sa.Column("name", sa.String(512), primary_key=True))


class NamedLocks:
    """`with locks.hold("study:NAME"): ...` runs the block while no other holder of
    that name, in this process or any other tuner of the store, runs its own."""

    def __init__(self, engine: sa.engine.Engine | None):
        """engine: the store's engine for a shared (server) store; None for SQLite."""
        self._engine = engine
        self._guard = threading.Lock()
        self._local: dict[str, threading.Lock] = {}
        self._known: set[str] = set()
        if engine is not None:
            self._create_table()

    @classmethod
    def for_storage(cls, storage, *, shared: bool) -> "NamedLocks":
        return cls(storage.engine if shared else None)

    def _create_table(self) -> None:
        try:
            _metadata.create_all(self._engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:
            # Another worker created it at the same moment; it exists now, or this fails.
            _metadata.create_all(self._engine, checkfirst=True)

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
