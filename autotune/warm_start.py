"""Warm start: seed a new study with another study's ranking of configs.

    ranking = load_ranking("studies/defaults.json")                      # an `autotune export` file
    ranking = load_ranking("sqlite:///studies/autotune.db", study_name="350m/cuda/queued/L2048")
    seed_study(study, ranking, space=space)      # once the study is open, before its first ask

The other study may come from another GPU, another torch version or a smaller context of
the same shape: where configs rank alike, its best configs are good first guesses.
`seed_study` enqueues the `top` best configs of the ranking, skipping any the study
holds in any state (so none is measured twice), so they are measured first, and stores the whole
ranking (at most MAX_RANKING configs) as the study's user attribute WARM_START_ATTR; the
strategies read it back (History.prior) and treat it as a prior (the Parzen member counts
its best configs as good until its own measurements take over).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autotune.space import DiscreteSpace
from autotune.strategies.history import WARM_START_ATTR
from autotune.store.layout import parse_study_name

DEFAULT_TOP = 3  # configs of the ranking measured first
MAX_RANKING = 100  # configs of the ranking kept as the prior


class WarmStartError(ValueError):
    """A warm-start source that cannot be read; the message names the fix."""


def ranking_from_study(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's measured configs, best first (completed, feasible trials; the mean
    value per config)."""
    sums: dict[str, list[float]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.value is None or not math.isfinite(trial.value) or any(c > 0 for c in trial.constraints.values()):
            continue
        key = json.dumps(trial.params, sort_keys=True)
        configs[key] = dict(trial.params)
        sums.setdefault(key, []).append(float(trial.value))
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    order = sorted(sums, key=lambda k: -sign * sum(sums[k]) / len(sums[k]))
    return [configs[k] for k in order]


def ranking_from_export(doc: Mapping[str, Any], context: int | None = None) -> list[dict[str, Any]]:
    """The configs of an `autotune export` document, one per table row: in file order,
    or with `context`, the rows of the nearest context length (log scale) first."""
    rows = [row for entry in doc.get("entries", []) for row in entry.get("table", [])]
    if context is not None:
        rows.sort(key=lambda row: abs(math.log2(max(1, int(row.get("context", 1)))) - math.log2(max(1, context))))
    return [{**row["config"], **row.get("kernel", {})} for row in rows if isinstance(row.get("config"), dict)]


def load_ranking(source: str | Path | optuna.Study | Sequence[Mapping[str, Any]], *,
                 study_name: str | None = None, context: int | None = None) -> list[dict[str, Any]]:
    """Configs best first from an open study, a list of configs (already ranked), an
    `autotune export` JSON file, or a store URL with `study_name`."""
    if isinstance(source, optuna.Study):
        return ranking_from_study(source)
    if isinstance(source, Sequence) and not isinstance(source, str):
        return [dict(c) for c in source]
    text = str(source)
    if "://" in text:
        if not study_name:
            names = ", ".join(optuna.study.get_all_study_names(text)[:10])
            raise WarmStartError(f"warm start from {text} needs the study's name; the store holds {names}")
        try:
            study = optuna.load_study(study_name=study_name, storage=text)
        except KeyError:
            raise WarmStartError(f"the store {text} has no study {study_name!r}") from None
        return ranking_from_study(study)
    path = Path(text)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WarmStartError(f"{path} does not exist; give an `autotune export` file or a store URL") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise WarmStartError(f"{path} is not an `autotune export` JSON file ({exc})") from None
    if not isinstance(doc, dict) or "entries" not in doc:
        raise WarmStartError(f"{path} is not an `autotune export` file (no 'entries'); write one with `autotune export`")
    return ranking_from_export(doc, context)


def study_in_store(url: str, name: str) -> str:
    """The study of the store at `url` that seeds the study `name`: the newest of the same
    shape, device kind and backends (another machine's study of the same spec has the same
    name), at `name`'s context length or else the nearest one (log scale)."""
    try:
        names = optuna.study.get_all_study_names(url)
    except Exception as exc:  # noqa: BLE001  an unreachable or foreign store, named in the message
        raise WarmStartError(f"cannot read the store {url}: {exc}") from None
    want = parse_study_name(name)
    keys = [(key, n) for n in names if (key := parse_study_name(n)) is not None and want is not None
            and key.family[:3] == want.family[:3]]
    if not keys:
        raise WarmStartError(f"the store {url} has no study of {name.rpartition('/L')[0]}; "
                             f"it holds {', '.join(names[:10]) or 'none'}")
    distance = lambda key: abs(math.log2(key.context) - math.log2(want.context))  # noqa: E731
    return max(keys, key=lambda kn: (-distance(kn[0]), kn[0].generation))[1]


def _held(study: optuna.Study, space: DiscreteSpace | None) -> set[tuple]:
    """Configs any trial of the study holds (params, or the fixed params of a waiting trial)."""
    held = set()
    for trial in study.get_trials(deepcopy=False):
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        if params:
            held.add(_key(params, space))
    return held


def _key(config: Mapping[str, Any], space: DiscreteSpace | None) -> tuple:
    try:
        return space.key(config) if space is not None else tuple(sorted(config.items()))
    except KeyError:  # params of another space
        return tuple(sorted(config.items()))


def seed_study(study: optuna.Study, source: Any, *, space: DiscreteSpace | None = None, top: int = DEFAULT_TOP,
               study_name: str | None = None, context: int | None = None,
               defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Enqueue those of the `top` best configs of `source`'s ranking that `study` does not
    hold yet (a resumed study gets none twice) and store the ranking as the prior;
    returns the configs enqueued. With `space`, only
    its valid configs are kept (a ranking from another space is filtered, not refused);
    knobs a ranked config lacks (a study without kernel knobs seeding one with them) take
    their value from `defaults`, the config the source's kernels ran with."""
    ranking = [{**(defaults or {}), **c} for c in load_ranking(source, study_name=study_name, context=context)]
    if space is not None:
        ranking = [dict(space.configs[i]) for i in (space.index(c) for c in ranking) if i is not None]
    unique, seen = [], set()
    for config in ranking:
        key = _key(config, space)
        if key not in seen:
            seen.add(key)
            unique.append(config)
    held = _held(study, space)
    enqueued = [config for config in unique[:top] if _key(config, space) not in held]
    for config in enqueued:
        study.enqueue_trial(config)
    study.set_user_attr(WARM_START_ATTR, unique[:MAX_RANKING])
    return enqueued
