"""The Optuna store: storage URLs, the SQLite writer lock, study names and
fingerprints, and recovery of trials a killed tuner left RUNNING.

One study per (model shape, device kind, backends, context length), named
`{shape}/{device_kind}/{backend+backend}/L{context}`. A study started beside an
existing one with `--new-study` gets the next free suffix `~2`, `~3`, ...; a plain run
resumes the newest study of that family.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autotune.errors import UserError
from autotune.errors import missing_driver
from autotune.preflight import busy_message, lock_path

SUFFIX_SEP = "~"
# A RUNNING trial whose heartbeat is older than this is stale on a shared (non-SQLite)
# store; trials send a heartbeat every HEARTBEAT_S while their benchmark runs.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 5 * HEARTBEAT_S
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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

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
    from sqlalchemy.exc import SQLAlchemyError

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
        from sqlalchemy.engine import make_url

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
    from sqlalchemy.exc import IntegrityError, ProgrammingError

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
    from sqlalchemy import event

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
    from sqlalchemy.engine import make_url

    return make_url(location.url).render_as_string(hide_password=True)


# ------------------------------------------------------------------ writer lock
class WriterLock:
    """One tuner per SQLite file: an exclusive `flock` on `<db>-lock`, holding the
    owner's pid. The kernel drops the lock when the owner dies (even by kill -9), so
    a stale lock file never blocks a resume."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        import fcntl

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


# ------------------------------------------------------------ names, fingerprint
def study_name(shape: str, device_kind: str, backends: tuple[str, ...] | list[str], context: int,
               batch: int = 1) -> str:
    """`shape/device/backends/L<context>`, with `/B<batch>` for batches above 1 (so the
    studies of batch 1 keep the names they had before batch was a dimension)."""
    name = f"{shape}/{device_kind}/{'+'.join(backends)}/L{context}"
    return name if batch == 1 else f"{name}/B{batch}"


def family(names: list[str], base: str) -> list[str]:
    """Studies named `base` or `base~N`, oldest first."""
    found: list[tuple[int, str]] = []
    for name in names:
        if name == base:
            found.append((1, name))
        elif name.startswith(base + SUFFIX_SEP) and name[len(base) + 1 :].isdigit():
            found.append((int(name[len(base) + 1 :]), name))
    return [name for _, name in sorted(found)]


def next_name(names: list[str], base: str) -> str:
    existing = family(names, base)
    if not existing:
        return base
    last = existing[-1]
    n = 1 if last == base else int(last.rsplit(SUFFIX_SEP, 1)[1])
    return f"{base}{SUFFIX_SEP}{n + 1}"


def machine_fingerprint(device) -> dict[str, str]:
    """What a measurement depends on beyond the config; the benchmark's env block
    reports the same fields from the same functions."""
    import torch

    from autotune.bench.env import device_name, project_version

    return {"device_name": device_name(device), "torch": torch.__version__, "project_version": project_version()}


def describe_fingerprint(fp: dict[str, Any]) -> str:
    return ", ".join(f"{k} {fp.get(k)!s}" for k in ("device_name", "torch", "project_version"))


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


# ------------------------------------------------------------------- recovery
def is_stale(trial: optuna.trial.FrozenTrial, *, single_writer: bool, now: float | None = None,
             lease_s: float = STALE_AFTER_S) -> bool:
    """A RUNNING trial nobody is measuring any more. With the SQLite writer lock held
    every RUNNING trial is one; on a shared store, one whose worker is certainly gone
    (same host, its process no longer exists) or whose heartbeat is older than the lease."""
    if trial.state != TrialState.RUNNING:
        return False
    if single_writer:
        return True
    from autotune.workers import is_gone

    if is_gone(trial.user_attrs.get("worker")):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if not isinstance(beat, (int, float)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = start
    return (now or time.time()) - beat > lease_s


def recover_stale_trials(storage: RDBStorage, study: optuna.Study, *, single_writer: bool,
                         lease_s: float = STALE_AFTER_S) -> list[int]:
    """Fail the stale RUNNING trials (user attr stale=true) and queue their configs
    again, so each is measured once more and nothing is lost.

    On a shared store the caller holds the study's lock (autotune.locks), so two workers
    never recover one trial, nor queue one config, twice. A kill during recovery itself
    leaves either a RUNNING trial (stale again next time) or a stale FAIL trial without
    a successor, which the next recovery queues. Returns the numbers of the trials failed.
    """
    recovered = []
    for trial in study.get_trials(deepcopy=False):
        if not is_stale(trial, single_writer=single_writer, lease_s=lease_s):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "stale", True)
            storage.set_trial_user_attr(trial._trial_id, "error_kind", "stale")
            storage.set_trial_user_attr(
                trial._trial_id, "error_message", "the tuner stopped during this trial; its config was queued again"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker was alive after all and finished it just now
        recovered.append(trial.number)
    requeue_stale_configs(study)
    return recovered


def requeue_stale_configs(study: optuna.Study) -> list[int]:
    """Queue the config of each stale FAIL trial that has no successor yet (a trial with
    user attr requeued_from = its number). Returns the numbers of the new trials' sources."""
    trials = study.get_trials(deepcopy=False)
    successors = {t.user_attrs.get("requeued_from") for t in trials}
    queued = []
    for trial in trials:
        if trial.state != TrialState.FAIL or not trial.user_attrs.get("stale") or trial.number in successors:
            continue
        # A trial killed before its params were stored still has them if it was queued.
        params = dict(trial.params) or _fixed_params(trial)
        if not params:
            continue
        user_attrs: dict[str, Any] = {"requeued_from": trial.number}
        if trial.user_attrs.get("baseline"):
            user_attrs["baseline"] = True
        study.enqueue_trial(params, user_attrs=user_attrs)
        queued.append(trial.number)
    return queued


def _fixed_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return dict(trial.system_attrs.get("fixed_params") or {})
