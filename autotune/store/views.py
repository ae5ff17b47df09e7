"""The read side of the store that `best`, `export`, `report` and `dashboard` share.

The studies a spec owns (names parsed by autotune.store.layout), the baseline trial
(user attr baseline: true), feasibility (the 'recall_floor' constraint), metric
medians, and opening a store for reading without ever creating one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import UserError, missing_driver
from autotune.objective import median
from autotune.spec import DEFAULT_STORAGE, load_spec
from autotune.store.layout import StudyKey, parse_study_name

# Optuna and SQLAlchemy are imported where they are used: they take a second to load, and
# the commands that import this module check their arguments first.


def open_storage(url: str):
    """An Optuna RDB storage for `url`; a missing SQLite file is an error, not a new store."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url!r} is not a database URL; use e.g. {DEFAULT_STORAGE}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise UserError(
                f"no store at {redact_url(url)} (looked for {Path(database or '?').resolve()}); "
                "run `autotune tune --study studies/<spec>.toml` first, or pass --storage URL"
            )
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:  # Optuna's wrapper of the driver's own ImportError
        module = getattr(exc.__cause__, "name", None) or exc.name
        raise UserError(missing_driver(redact_url(url), parsed.get_backend_name(), module)) from None
    except Exception as exc:  # driver missing, server down, auth: all user-fixable
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open the store {redact_url(url)}: {first_line}") from None


@dataclass(frozen=True)
class StudyFilter:
    """The studies one spec file owns: its shape, backends, contexts and device kind."""

    shape: str
    backends: tuple[str, ...]
    contexts: tuple[int, ...]
    device_kind: str | None  # None: a spec with device 'auto' matches any device kind
    batches: tuple[int, ...] = (1,)

    def __call__(self, key: StudyKey) -> bool:
        return (
            key.shape == self.shape
            and key.backends == self.backends
            and key.context in self.contexts
            and key.batch in self.batches
            and (self.device_kind is None or key.device_kind == self.device_kind)
        )


def redact_url(url: str) -> str:
    """The storage URL without its password, for output that may be shared."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing about it
        return "(storage)"


def store_selection(storage: str | None, study: str | None) -> tuple[str, StudyFilter | None]:
    """(storage URL, which studies to keep or None for all) for an optional storage URL
    and an optional spec file (its studies, and its storage unless `storage` is given)."""
    keep = None
    url = storage
    if study:
        spec = load_spec(study)
        device = spec.model.device
        # 'auto' resolves differently per machine, and the store may be shared: match any.
        kind = None if device == "auto" else device.split(":")[0]
        keep = StudyFilter(spec.model.shape, tuple(spec.model.backends), tuple(spec.workload.contexts), kind,
                           tuple(spec.workload.batches))
        url = url or spec.storage
    return url or DEFAULT_STORAGE, keep


def is_feasible(trial) -> bool:
    """Every constraint (the recall floor) is <= 0; a trial without constraints is feasible."""
    return all(value <= 0.0 for value in trial.constraints.values())


def metric_medians(metrics: Any) -> dict[str, float]:
    """{name: median} for every numeric metric (raw samples dropped)."""
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for name, value in metrics.items():
        m = median(value)
        if m is not None:
            out[name] = m
    return out


def knobs_of(trial) -> dict[str, Any]:
    """The trial's knob values (and its backend when the study searched several)."""
    return {k: v for k, v in trial.params.items()}


@dataclass
class StudyView:
    """One study of the store with the trials the outputs need."""

    name: str
    key: StudyKey
    user_attrs: dict[str, Any]
    trials: list  # every FrozenTrial, by number
    study: Any = None  # the optuna.Study (for optuna.importance)

    @property
    def dtype(self) -> str:
        return str(self.user_attrs.get("dtype", "float32"))

    @property
    def complete(self) -> list:
        import optuna

        return [t for t in self.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]

    @property
    def baseline(self):
        """The completed baseline trial (the runner's default config), if any."""
        for trial in self.complete:
            if trial.user_attrs.get("baseline") is True:
                return trial
        return None

    @property
    def best(self):
        """The completed feasible trial with the highest score, if any."""
        candidates = [t for t in self.complete if is_feasible(t)]
        return max(candidates, key=lambda t: (t.value, -t.number)) if candidates else None

    def trial(self, number: int):
        for trial in self.trials:
            if trial.number == number:
                return trial
        return None

    def backend_of(self, trial) -> str:
        """The backend a trial ran: its 'backend' knob, else the study's only backend."""
        return str(trial.params.get("backend", self.key.backends[0]))


def load_views(storage, keep: StudyFilter | None = None) -> list[StudyView]:
    """The tuner's current studies in the store, by shape/device/backend/context.

    Studies not named by the tuner are ignored, and of a family `name`, `name~2`, ...
    only the newest (the one `autotune tune` resumes) is read.
    """
    import optuna

    newest: dict[tuple, tuple[StudyKey, str]] = {}
    for name in optuna.study.get_all_study_names(storage):
        key = parse_study_name(name)
        if key is None or (keep is not None and not keep(key)):
            continue
        if key.family not in newest or key.generation > newest[key.family][0].generation:
            newest[key.family] = (key, name)
    views = []
    for key, name in newest.values():
        study = optuna.load_study(study_name=name, storage=storage)
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        views.append(StudyView(name, key, dict(study.user_attrs), trials, study))
    views.sort(key=lambda v: (v.key.shape, v.key.device_kind, v.key.backends, v.key.batch, v.key.context))
    return views
