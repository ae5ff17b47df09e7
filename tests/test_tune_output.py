"""The per-trial progress line names the study it belongs to, batch included."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from autotune.store.layout import study_name, study_tail
from autotune.tune_output import Progress


def test_the_label_is_the_tail_of_the_study_name():
    for batch in (1, 16):
        assert study_name("tiny", "cpu", ("queued",), 2048, batch).endswith("/" + study_tail(2048, batch))
    assert study_tail(2048, 1) == "L2048" and study_tail(2048, 16) == "L2048/B16"


def test_each_trial_line_starts_with_the_study_label(capsys):
    trial = optuna.trial.create_trial(params={"workers": 2}, distributions={"workers": CategoricalDistribution([1, 2])},
                                      value=1.5, user_attrs={"strategy": "bandit", "wall_s": 3.0})
    progress = Progress(study_tail(64, 4), 5, 0, None)
    progress.trial(trial, trial.params, trial)
    progress.close()
    line = next(x for x in capsys.readouterr().err.splitlines() if "trial 1/5" in x)
    assert line.startswith("L64/B4 trial 1/5") and "[bandit] workers=2" in line and "best 1.500" in line
