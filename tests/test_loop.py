"""The search loop driven by an in-memory evaluator (a recorded surface): no process,
no device. What it must keep: the baseline first, the budget, no config measured twice
(also with several slots), failures as FAIL trials with their kind, an interrupted
measurement queued again, and a StudySession that resumes without measuring again."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autotune.evaluators import SurfaceEvaluator
from autotune.evaluators.surface import config_key
from autotune.store.locks import NamedLocks
from autotune.loop import NoStop, SearchLoop
from autotune.records import TrialRecord
from autotune.session import StudySession
from autotune.spec import load_spec
from autotune.store.storage import open_storage, parse_storage_url
from autotune.study_search import Budget, StudySearch
from autotune.tune_output import Progress
from autotune.workers import Slot
from tiny_study import tiny_spec_text


def _metric(value: float) -> dict:
    return {"samples": [value] * 3, "median": value, "iqr": 0.0}


def _result(config: dict) -> dict:
    speed = config["workers"] * (1 + config["chunk_size"] / 256)
    return {"status": "ok", "metrics": {"prefill_tok_s": _metric(1000 * speed), "decode_tok_s": _metric(50 * speed),
                                        "ttft_ms": _metric(1.0), "recall": 1.0}}


def _session(tmp_path, **kw) -> StudySession:
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(tiny_spec_text())
    location = parse_storage_url(f"sqlite:///{tmp_path}/t.db")
    session = StudySession(load_spec(spec_path), 64, storage=open_storage(location), location=location,
                           device_kind="cpu", fingerprint={"device_name": "test"}, locks=NamedLocks(None),
                           lease_s=150.0, seed=1, **kw)
    session.open()
    return session


def _runs(session, fail=lambda config: None) -> dict:
    runs = {}
    for config in session.space.configs:
        full = {"backend": "queued", **config}
        runs[config_key(full)] = [fail(full) or _result(full)]
    return runs


def _surface(session, fail=lambda config: None) -> SurfaceEvaluator:
    return SurfaceEvaluator(_runs(session, fail))


def _run(session, evaluators, n_trials):
    slots = [(Slot(i), e) for i, e in enumerate(evaluators)] if len(evaluators) > 1 else [(Slot(), evaluators[0])]
    progress = Progress("L64", n_trials, len(session.counted()), None)
    search = StudySearch(session, budget=Budget(n_trials, None), device="cpu", process="surface", progress=progress)
    try:
        SearchLoop(search, slots, stop=NoStop(), tick_s=30.0).run()
    finally:
        progress.close()
    return search


def test_the_loop_measures_the_baseline_first_then_distinct_configs_to_the_budget(tmp_path):
    session = _session(tmp_path)
    surface = _surface(session)
    _run(session, [surface], 6)
    records = [TrialRecord.of(t) for t in session.trials()]
    assert len(records) == 6 and all(r.state == TrialState.COMPLETE for r in records)
    assert records[0].baseline and records[0].strategy == "baseline"
    assert [r.baseline for r in records[1:]] == [False] * 5
    assert len(set(surface.measured)) == len(surface.measured) == 6
    assert session.baseline is not None and records[0].value == pytest.approx(3.0)  # 1 + 1 + recall 1
    assert session.best().value >= records[0].value


def test_several_slots_share_the_budget_without_measuring_a_config_twice(tmp_path):
    session = _session(tmp_path)
    first, second = _surface(session), _surface(session)
    _run(session, [first, second], 9)
    trials = session.trials()
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    measured = first.measured + second.measured
    assert len(set(measured)) == len(measured) == 9
    assert {t.user_attrs["gpu"] for t in trials} <= {0, 1}


def test_failures_are_fail_trials_with_their_kind_and_resume_measures_nothing_twice(tmp_path):
    session = _session(tmp_path)
    oom = {"status": "error", "error": {"kind": "oom", "message": "out of memory"}}
    surface = _surface(session, fail=lambda c: oom if c["T_inner"] == 8 and c["heads_per_band"] != 4 else None)
    _run(session, [surface], 10)
    failed = [TrialRecord.of(t) for t in session.trials() if t.state == TrialState.FAIL]
    assert failed and all(r.error_kind == "oom" and r.params["T_inner"] == 8 for r in failed)
    again = _session(tmp_path)  # resume: the same study, its budget already spent
    more = _surface(again)
    _run(again, [more], 10)
    assert more.measured == [] and len(again.trials()) == 10


def test_an_interrupted_measurement_is_queued_again_as_after_a_kill(tmp_path):
    session = _session(tmp_path)
    interrupted_once = []

    class Interrupting(SurfaceEvaluator):
        def measure(self, request, **kw):
            if len(self.measured) == 2 and not interrupted_once:
                interrupted_once.append(True)
                kw["cancel"] = lambda: True
            return super().measure(request, **kw)

    _run(session, [Interrupting(_runs(session))], 5)
    records = [TrialRecord.of(t) for t in session.trials()]
    stale = [r for r in records if r.stale]
    assert len(stale) == 1 and stale[0].error_kind == "interrupted"
    again = [r for r in records if r.requeued_from == stale[0].number]
    assert len(again) == 1 and again[0].params == stale[0].params and again[0].state == TrialState.COMPLETE
    assert sum(r.counted for r in records) == 5  # the stale trial does not count


def test_a_failing_baseline_ends_the_search_with_its_error(tmp_path):
    session = _session(tmp_path)
    crash = {"status": "error", "error": {"kind": "crash", "message": "boom"}}
    surface = _surface(session, fail=lambda c: crash if c["heads_per_band"] == 4 else None)
    loop = _run(session, [surface], 5)
    assert loop.error.startswith("the baseline config") and "crash: boom" in loop.error
    assert len(session.trials()) == 1


def test_a_surface_evaluator_answers_from_a_sweep_surface_in_turn():
    from autotune.bench.config import BenchRequest

    doc = {"entries": [
        {"config": {"workers": 1, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64},
         "runs": [{"status": "ok", "metrics": {"prefill_tok_s": _metric(1.0)}},
                  {"status": "ok", "metrics": {"prefill_tok_s": _metric(2.0)}}]},
        {"config": {"workers": 2, "heads_per_band": 2, "chunk_size": 64, "T_inner": 64},
         "runs": [{"status": "error", "error": {"kind": "oom", "message": "fake"}}]},
    ]}
    surface = SurfaceEvaluator.from_surface(doc, "queued")
    first = BenchRequest(shape="tiny", backend="queued", workers=1, heads_per_band=4, chunk_size=64, T_inner=64)
    medians = [surface.measure(first, timeout_s=1).result.metrics["prefill_tok_s"]["median"] for _ in range(3)]
    assert medians == [1.0, 2.0, 1.0]  # the recorded runs in turn, as re-measurements
    assert surface.measure(first, timeout_s=1).result.config == first.to_dict()
    oom = surface.measure(first.with_changes(workers=2, heads_per_band=2), timeout_s=1)
    assert not oom.ok and oom.error_kind == "oom"
    missing = surface.measure(first.with_changes(chunk_size=32, T_inner=32), timeout_s=1)
    assert missing.error_kind == "missing" and "no run" in missing.error_message
