"""Opening the Optuna store: storage URLs, the RDB storage (SQLite in WAL mode),
studies with their machine fingerprint and spec identity checks."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (ArgumentError, IntegrityError, NoSuchModuleError, ProgrammingError,
                            SQLAlchemyError)

from autotune.errors import UserError
from autotune.errors import missing_driver
from autotune.store.fingerprint import describe_fingerprint
from autotune.store.layout import family, next_name

METRIC_NAME = "score"  # the objective's name in Optuna (and so in the dashboard)
SCHEMA_RACE_ATTEMPTS = 5  # opening a fresh server database while other workers create its tables


class StoreError(UserError):
    """A storage problem the user can fix; the message says how."""


# ---------------------------------------------------------------------------- URLs
@dataclass(frozen=True)
class StorageURL:
    url: str  # what Optuna opens (SQLite paths made absolute)
    sqlite_path: Path | None  # the database file for SQLite, else None

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None


_URL_EXAMPLES = "e.g. sqlite:///studies/autotune.db or postgresql+psycopg://user:pass@host/db"


def parse_storage_url(url: str, *, base_dir: Path | None = None) -> StorageURL:
    """Validate a SQLAlchemy URL; a relative SQLite path is taken from `base_dir`
    (default: the working directory). A missing folder is an error, never created: it
    is more often a typo than a wish."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"storage URL {url!r} is not a database URL; {_URL_EXAMPLES}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise StoreError(
                f"storage URL {url!r} names no SQLite file (an in-memory store would vanish "
                "when the tuner exits); give a path, e.g. sqlite:///studies/autotune.db"
            )
        path = Path(database).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        if not path.parent.is_dir():
            raise StoreError(
                f"the folder {path.parent} of the SQLite store does not exist; create it first "
                f"(mkdir -p {path.parent}) or pass another --storage"
            )
        return StorageURL(parsed.set(database=str(path)).render_as_string(hide_password=False), path)
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise StoreError(f"storage URL {url!r}: unknown database kind {parsed.drivername!r}; {_URL_EXAMPLES}") from None
    except ImportError as exc:
        raise StoreError(missing_driver(parsed.render_as_string(hide_password=True), backend, exc.name)) from None
    return StorageURL(url, None)


def open_storage(location: StorageURL) -> RDBStorage:
    """Open (creating tables if needed) the Optuna RDB storage; errors name the fix."""
    engine_kwargs: dict[str, Any] = {}
    if location.is_sqlite:
        # Readers (best/report/dashboard) may hold the file briefly; wait, do not fail.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        storage = _create_rdb_storage(location, engine_kwargs)
        if location.is_sqlite:
            _use_write_ahead_log(storage)
        return storage
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StoreError(f"cannot open the store {_display(location)}: {detail}") from None
    except ImportError as exc:  # the driver is imported only when the engine is made
        module = getattr(exc.__cause__, "name", None) or exc.name
        raise StoreError(missing_driver(_display(location), make_url(location.url).get_backend_name(), module)) from None
    except RuntimeError as exc:  # Optuna's schema version check
        raise StoreError(
            f"the store {_display(location)} was written by another Optuna version ({exc}); "
            f"upgrade it with: optuna storage upgrade --storage '{location.url}'"
        ) from None


def _create_rdb_storage(location: StorageURL, engine_kwargs: dict[str, Any]) -> RDBStorage:
    """RDBStorage, which creates Optuna's tables in a new database. Workers started
    together on a fresh server database race to create them; the losers get an
    integrity or 'already exists' error and find the tables complete a moment later."""
    attempts = 1 if location.is_sqlite else SCHEMA_RACE_ATTEMPTS
    for attempt in range(attempts):
        try:
            return RDBStorage(location.url, engine_kwargs=engine_kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _use_write_ahead_log(storage: RDBStorage) -> None:
    """WAL journal with synchronous=NORMAL: a commit no longer waits for an fsync (the
    tuner commits each user attr separately; with a rollback journal that alone took
    longer than a small trial). The file stays consistent after a crash or kill -9;
    only a power cut may lose the last commits, which resume then measures again."""
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener are replaced


def _display(location: StorageURL) -> str:
    if location.sqlite_path is not None:
        return str(location.sqlite_path)
    return make_url(location.url).render_as_string(hide_password=True)


# -------------------------------------------------------------------- studies
@dataclass
class OpenedStudy:
    study: optuna.Study
    created: bool


def open_study(
    storage: RDBStorage,
    base: str,
    *,
    fingerprint: dict[str, Any],
    identity: dict[str, Any],
    attrs: dict[str, Any],
    sampler: optuna.samplers.BaseSampler,
    new_study: bool,
) -> OpenedStudy:
    """Resume the newest study of the family `base`, or create one.

    Refuses to resume a study measured on another machine/installation (fingerprint)
    or created from a spec that measures or scores differently (identity); with
    `new_study` a fresh study is started beside it instead.
    attrs: study user attrs written once, when the study is created.
    """
    names = [s.study_name for s in storage.get_all_studies()]
    existing = family(names, base)
    if existing and not new_study:
        name = existing[-1]
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        stored = study.user_attrs
        if "fingerprint" not in stored:
            # Its creator stopped before writing the attrs (they come last): finish that.
            _write_attrs(study, {**attrs, "fingerprint": fingerprint, "identity": identity})
            return OpenedStudy(study, created=True)
        if stored.get("fingerprint") != fingerprint:
            raise StoreError(
                f"study {name} was measured on another machine or installation "
                f"({describe_fingerprint(stored.get('fingerprint') or {})}); this one is "
                f"{describe_fingerprint(fingerprint)}. Mixing them would compare unlike "
                f"measurements: pass --new-study to start {next_name(names, base)} beside it, "
                "or use another --storage"
            )
        if stored.get("identity") != identity:
            changed = _changed_keys(stored.get("identity") or {}, identity) or ["its stored settings"]
            raise StoreError(
                f"study {name} was created from a spec that differs in {', '.join(changed)}; "
                "its trials would not be comparable. Restore those keys, or pass --new-study "
                f"to start {next_name(names, base)} beside it"
            )
        return OpenedStudy(study, created=False)
    name = next_name(names, base)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize")
        with warnings.catch_warnings():  # experimental in Optuna, and stable in use since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])  # the dashboard labels its axes "score"
    except optuna.exceptions.DuplicatedStudyError:
        # Another worker created it between our listing and now (callers on a shared
        # store hold a lock around this, other tools may not): open it instead.
        return open_study(storage, base, fingerprint=fingerprint, identity=identity, attrs=attrs,
                          sampler=sampler, new_study=False)
    _write_attrs(study, {**attrs, "fingerprint": fingerprint, "identity": identity})
    return OpenedStudy(study, created=True)


def _write_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    # The fingerprint last: its presence says the study is complete.
    for key, value in sorted(attrs.items(), key=lambda kv: kv[0] == "fingerprint"):
        study.set_user_attr(key, value)


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key.sub (old -> new)' for every leaf that differs; empty when none does."""
    keys: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return keys
