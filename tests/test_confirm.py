"""Confirmation: the repeats split over benchmark processes, measured in rounds."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import IntDistribution

from autotune import confirm as confirmation
from autotune.objective import Baseline
from autotune.spec import ConfirmationSpec, ObjectiveSpec
from autotune.trials import TrialOutcome

WEIGHTS = ObjectiveSpec(w_decode=1.0, w_prefill=1.0, w_recall=0.0)
BASELINE = Baseline(prefill_tok_s=100.0, decode_tok_s=100.0)


def study_of(scores: dict[int, float]) -> optuna.Study:
    """Trial 0 (workers 1) is the baseline; each other trial's config is its workers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for workers, value in scores.items():
        study.add_trial(optuna.trial.create_trial(
            params={"workers": workers}, distributions={"workers": IntDistribution(1, 8)}, value=value,
            user_attrs={"baseline": workers == 1}))
    return study


class Bench:
    """A fake benchmark: speed = 100 x speedup[workers], each process off by its own factor."""

    def __init__(self, speedup: dict[int, float], process_factors: list[float], fail: set[int] = frozenset()):
        self.speedup, self.factors, self.fail = speedup, process_factors, fail
        self.calls: list[tuple[int, int]] = []

    def __call__(self, params: dict, repeats: int) -> TrialOutcome:
        workers = params["workers"]
        self.calls.append((workers, repeats))
        if workers in self.fail:
            return TrialOutcome({"status": "error", "error": {"kind": "oom", "message": "fake"}}, "", 1.0, 1)
        factor = self.factors[(len(self.calls) - 1) % len(self.factors)]
        speed = 100.0 * self.speedup[workers] * factor
        series = {"samples": [speed * (1 + 0.001 * r) for r in range(repeats)]}
        metrics = {"prefill_tok_s": series, "decode_tok_s": series, "recall": 1.0}
        return TrialOutcome({"status": "ok", "metrics": metrics}, "", 2.0, 0)


def run(study, bench, **settings) -> confirmation.Verdict:
    baseline_trial = study.trials[0]
    return confirmation.confirm(study, baseline_trial=baseline_trial, baseline=BASELINE, weights=WEIGHTS,
                                settings=ConfirmationSpec(**settings), measure=bench, log=lambda _: None)


def test_repeats_are_split_as_evenly_as_they_go():
    assert confirmation.split_repeats(8, 3) == [3, 3, 2]
    assert confirmation.split_repeats(6, 2) == [3, 3]
    assert confirmation.split_repeats(5, 1) == [5]


def test_configs_are_measured_in_rounds_and_their_processes_pooled():
    study = study_of({1: 2.0, 4: 3.0, 2: 2.5})
    bench = Bench({1: 1.0, 2: 1.1, 4: 1.5}, process_factors=[1.0])
    verdict = run(study, bench, top_k=2, repeats=7, processes=3)
    # round by round: baseline, then the candidates best first; 7 repeats as 3 + 2 + 2
    assert bench.calls == [(1, 3), (4, 3), (2, 3), (1, 2), (4, 2), (2, 2), (1, 2), (4, 2), (2, 2)]
    assert verdict.processes == 3 and verdict.verdict == "improved" and verdict.beats_baseline
    winner = verdict.candidates[0]
    assert winner["config"] == {"workers": 4} and winner["processes"] == 3 and len(winner["samples"]) == 7
    assert winner["metrics"]["prefill_tok_s"]["samples"][:3] == pytest.approx([150.0, 150.15, 150.3])
    assert winner["metrics"]["prefill_tok_s"]["median"] == pytest.approx(150.0, rel=1e-3)
    assert winner["process_medians"] == pytest.approx([3.003, 3.001, 3.001], rel=1e-3)


def test_a_config_that_fails_is_not_measured_again():
    study = study_of({1: 2.0, 4: 3.0, 2: 2.5})
    bench = Bench({1: 1.0, 2: 1.1, 4: 1.5}, process_factors=[1.0], fail={4})
    verdict = run(study, bench, top_k=2, repeats=6, processes=2)
    assert bench.calls.count((4, 3)) == 1 and bench.calls.count((2, 3)) == 2
    failed = verdict.candidates[0]
    assert failed["ok"] is False and failed["error_kind"] == "oom" and failed["processes"] == 1
    assert verdict.default["config"] == {"workers": 2}


def test_one_fast_process_alone_does_not_make_a_winner():
    """A candidate no faster than the baseline, measured in a process that ran 20% fast.
    With the repeats in one process the test takes the process for the config; split over
    two rounds, the other process's slow repeats keep it from significance."""
    scores = {1: 2.0, 4: 3.0}
    # call order: baseline, candidate, baseline, candidate: the candidate's first process is fast
    one = run(study_of(scores), Bench({1: 1.0, 4: 1.0}, process_factors=[1.0, 1.2]), top_k=1, repeats=8, processes=1)
    assert one.verdict == "improved"
    split = run(study_of(scores), Bench({1: 1.0, 4: 1.0}, process_factors=[1.0, 1.2, 1.0, 0.9]),
                top_k=1, repeats=8, processes=2)
    assert split.verdict == "baseline" and not split.beats_baseline
    assert split.candidates[0]["process_medians"] == pytest.approx([2.4, 1.8], rel=1e-2)


def test_a_verdict_from_another_process_count_is_not_current():
    study = study_of({1: 2.0, 4: 3.0})
    run(study, Bench({1: 1.0, 4: 1.5}, process_factors=[1.0]), top_k=1, repeats=6, processes=2)
    assert confirmation.is_current(study, ConfirmationSpec(top_k=1, repeats=6, processes=2))
    assert not confirmation.is_current(study, ConfirmationSpec(top_k=1, repeats=6, processes=3))
    stored = study.user_attrs[confirmation.ATTR]  # the stored format, as export reads it
    assert stored["winner"] == stored["default"]["trial"] and stored["beats_baseline"] is True
    assert confirmation.Verdict.from_attr(stored).as_attr() == stored
