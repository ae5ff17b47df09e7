"""Replay through the shared search loop gives exactly the recorded runs."""

from __future__ import annotations

import json

import pytest

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
