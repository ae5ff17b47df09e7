"""Warm start: another study's best configs are measured first, never twice; its ranking is the prior."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from autotune.space import SearchSpace
from autotune.strategies import STRATEGY_ATTR, make_sampler
from autotune.warm_start import WARM_START_ATTR, WarmStartError, load_ranking, seed_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

VALUES = {"workers": [1, 2, 4], "heads_per_band": [1, 2, 4], "chunk_size": [16, 32, 64], "T_inner": [4, 8, 16]}
SPACE = SearchSpace(VALUES, num_heads=4, context=64)


def score(cfg) -> float:
    return cfg["workers"] + cfg["chunk_size"] / 16 - cfg["T_inner"] / 8


def run(study, n):
    for _ in range(n):
        trial = study.ask()
        cfg = {k: trial.suggest_categorical(k, SPACE.values[k]) for k in SPACE.knob_names}
        study.tell(trial, score(cfg))


def other_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    other = optuna.create_study(study_name="other", storage=url, direction="maximize",
                                sampler=make_sampler("random", SPACE, seed=1))
    run(other, 20)
    return url, other


def test_a_seeded_study_measures_the_seed_configs_first_and_never_twice(tmp_path):
    url, other = other_study(tmp_path)
    ranking = load_ranking(url, study_name="other")
    best = sorted(((t.value, t.params) for t in other.trials), key=lambda x: -x[0])
    assert ranking[0] == best[0][1] and len(ranking) == 20

    study = optuna.create_study(direction="maximize", sampler=make_sampler("portfolio", SPACE, seed=0))
    study.enqueue_trial(ranking[1])
    run(study, 1)  # the second best, already measured: the warm start must not enqueue it again
    seeds = seed_study(study, url, space=SPACE, study_name="other", top=4)
    assert seeds == [ranking[0], *ranking[2:4]]
    assert seed_study(study, ranking, space=SPACE, top=3) == []  # a second seeding finds them all held
    run(study, 10)
    params = [t.params for t in study.trials]
    assert params[1:4] == seeds  # measured right after what the study held
    keys = [json.dumps(p, sort_keys=True) for p in params]
    assert len(keys) == len(set(keys))  # nothing twice, the strategies included
    assert study.user_attrs[WARM_START_ATTR][:5] == ranking[:5]
    assert all(t.user_attrs.get(STRATEGY_ATTR) for t in study.trials[4:])


def test_the_ranking_is_the_parzen_members_prior():
    ranking = sorted(SPACE.configs, key=lambda c: -score(c))
    study = optuna.create_study(direction="maximize", sampler=make_sampler("parzen", SPACE, seed=0))
    study.set_user_attr(WARM_START_ATTR, ranking)
    run(study, 4)
    top = {json.dumps(c, sort_keys=True) for c in ranking[:10]}
    near_top = sum(json.dumps(t.params, sort_keys=True) in top for t in study.trials)
    assert near_top >= 2  # drawn from the prior's good set, not uniformly (10 of 81 configs)


def test_an_export_file_ranks_its_rows_and_bad_sources_are_clear_errors(tmp_path):
    export = tmp_path / "defaults.json"
    rows = [{"context": 512, "config": {"workers": 2, "heads_per_band": 4, "chunk_size": 64, "T_inner": 8}},
            {"context": 2048, "config": {"workers": 4, "heads_per_band": 2, "chunk_size": 32, "T_inner": 16}}]
    export.write_text(json.dumps({"schema_version": 1, "entries": [{"table": rows}]}))
    assert load_ranking(export, context=2048)[0] == rows[1]["config"]
    assert load_ranking(export)[0] == rows[0]["config"]
    with pytest.raises(WarmStartError, match="does not exist"):
        load_ranking(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(WarmStartError, match="autotune export"):
        load_ranking(tmp_path / "x.json")
    url, _ = other_study(tmp_path)
    with pytest.raises(WarmStartError, match="needs the study's name"):
        load_ranking(url)


def test_knobs_the_source_lacks_take_the_value_its_runs_had(tmp_path):
    _, other = other_study(tmp_path)
    wider = SearchSpace({**VALUES, "backend": ["sequential", "queued"]}, num_heads=4, context=64)
    study = optuna.create_study(direction="maximize")
    queued = seed_study(study, other, space=wider, defaults={"backend": "queued"})
    assert len(queued) == 3 and all(c["backend"] == "queued" for c in queued)
    assert [{k: v for k, v in c.items() if k != "backend"} for c in queued] == load_ranking(other)[:3]
    assert seed_study(optuna.create_study(direction="maximize"), other, space=wider) == []  # nothing to fill from
