"""Named locks shared by every tuner of one store.

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
the writer lock (autotune.store) already keeps other processes out; only this
process's threads are serialised.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

TABLE = "autotune_locks"
_metadata = sa.MetaData()
_locks = sa.Table(TABLE, _metadata, sa.Column("name", sa.String(512), primary_key=True))


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
        from autotune.store import StoreError

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
