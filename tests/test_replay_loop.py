"""Replay through the shared search loop gives exactly the recorded runs."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from autotune.evaluators import SurfaceDraws
from autotune.loop import SearchLoop
from autotune.replay.search import ReplaySearch
from autotune.replay.synthetic import xlstm_surface
from autotune.workers import Slot
from tests.replay_trace_record import RECORD_PATH, record


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RECORD_PATH.read_text())


@pytest.fixture(scope="module")
def now() -> dict:
    return record()


def test_every_recorded_run_is_replayed(recorded, now):
    assert sorted(now) == sorted(recorded)


@pytest.mark.parametrize("key", sorted(json.loads(RECORD_PATH.read_text())))
def test_replay_matches_the_record(recorded, now, key):
    # configs in order, best-so-far values, labels, counts and P-scores, exactly
    assert now[key] == recorded[key]


def test_the_record_covers_invalid_revisited_and_stopped_runs(recorded):
    runs = [v for k, v in recorded.items() if not k.endswith("p_score")]
    assert any(r["invalid"] for r in runs) and any(r["revisits"] for r in runs)
    assert any(None in r["proposed"] for r in runs)
    assert len(recorded["xlstm/tpe/stalled"]["best"]) < 25  # ended by the stall limit
    assert recorded["kernel/portfolio/capped"]["proposals"] == 12  # ended by max_proposals
    assert "warm start" in recorded["xlstm/portfolio/warm"]["proposed_by"]
    assert "start" not in recorded["xlstm/portfolio/nostart"]["proposed_by"]


def test_surface_draws_answers_from_the_seeded_stream():
    samples = [np.array([1.0, 2.0, 3.0]), np.zeros(0)]
    draws = SurfaceDraws(samples, np.random.default_rng(9), "time")
    again = np.random.default_rng(9)
    got = [draws.measure(0).result.metrics["time"] for _ in range(5)]
    assert got == [float(samples[0][again.integers(3)]) for _ in range(5)]
    failed = draws.measure(1)
    assert not failed.ok and failed.error_kind == "failed"


def test_only_first_visits_reach_the_evaluator():
    surface = xlstm_surface(1)
    study = optuna.create_study(direction=surface.direction, sampler=optuna.samplers.TPESampler(seed=0))
    search = ReplaySearch(study, surface, "tpe", max_evals=25, max_proposals=300, stall_limit=50, start=False, seeded=0)

    asked = []

    class Counting(SurfaceDraws):
        def measure(self, request, **kwargs):
            asked.append(request)
            return super().measure(request, **kwargs)

    SearchLoop(search, [(Slot(), Counting(surface.samples, np.random.default_rng(0), surface.objective))]).run()
    assert search.invalid + search.revisits > 0  # TPE proposes both here
    assert len(asked) == len(set(asked)) == len(search.best) == 25
    assert search.proposals == 25 + search.invalid + search.revisits
