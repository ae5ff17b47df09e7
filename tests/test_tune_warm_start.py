"""`autotune tune --warm-start`: another study's best configs are measured first, never twice."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import UserError
from autotune.strategies.history import WARM_START_ATTR
from autotune.commands.tune import tune_and_report
from autotune.warm_start import ranking_from_study
from tests.test_tune import _options, _spec, fake_bench  # noqa: F401  (fixture)


def _only_study(url: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def test_a_seeded_study_measures_the_source_s_best_configs_first_and_never_twice(tmp_path, fake_bench):
    spec = _spec(tmp_path, top_k=0)
    source_url = f"sqlite:///{tmp_path}/source.db"
    assert tune_and_report(spec, _options(tmp_path, fake_bench, storage=source_url, n_trials=6)) == 0
    source = _only_study(source_url)
    ranking = ranking_from_study(source)

    url = f"sqlite:///{tmp_path}/seeded.db"
    assert tune_and_report(spec, _options(tmp_path, fake_bench, storage=url, n_trials=5, warm_start=source_url)) == 0
    seeded = _only_study(url)
    trials = sorted(seeded.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    baseline = trials[0].params
    expected = [c for c in ranking if c != baseline][:3]
    assert [t.params for t in trials[1:4]] == expected
    assert seeded.user_attrs[WARM_START_ATTR][:3] == ranking[:3]

    # A resumed run seeds nothing again and measures no config twice.
    assert tune_and_report(spec, _options(tmp_path, fake_bench, storage=url, n_trials=8, warm_start=source_url)) == 0
    params = [tuple(sorted(t.params.items())) for t in _only_study(url).get_trials(states=(TrialState.COMPLETE,))]
    assert len(params) == 8 and len(set(params)) == 8


def test_a_warm_start_source_that_cannot_be_read_is_one_clear_error(tmp_path, fake_bench):
    spec = _spec(tmp_path, top_k=0)
    with pytest.raises(UserError, match="--warm-start: .*does not exist"):
        tune_and_report(spec, _options(tmp_path, fake_bench, warm_start=str(tmp_path / "missing.json")))
