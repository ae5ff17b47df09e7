"""`autotune tune`: studies per context, baseline first, budget, resume, Ctrl-C, kill -9,
fingerprints, the SQLite writer lock, confirmation.

Most tests run the tuner in-process against a small fake benchmark (fast, and its
metrics are known); the end-to-end tests at the bottom run the real `autotune tune`
command with the real benchmark, including a real SIGKILL in the middle of a trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import UserError
from autotune.objective import Baseline, recall_violation, score, score_samples
from autotune.spec import ObjectiveSpec, load_spec
from autotune.store.storage import StoreError, parse_storage_url
from autotune.store.locks import WriterLock
from autotune.store.layout import study_name
from autotune.commands.tune import tune_and_report
from autotune.tune import ContextTuner, TuneOptions
from tiny_study import tiny_spec_text, wait_for

ROOT = Path(__file__).resolve().parents[1]

FAKE_BENCH = ROOT / "tests" / "fake_bench.py"


@pytest.fixture
def fake_bench() -> tuple[str, ...]:
    return (sys.executable, str(FAKE_BENCH))


def _spec(tmp_path, contexts=(64,), floor=0.0, top_k=3, extra=""):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec_text(contexts=contexts, objective=f"recall_floor = {floor}",
                                   search="n_trials = 5\nseed = 1", confirmation=f"top_k = {top_k}\nrepeats = 6")
                    + extra)
    return load_spec(path)


def _options(tmp_path, fake_bench, **kw) -> TuneOptions:
    defaults = dict(storage=f"sqlite:///{tmp_path}/t.db", n_trials=5, timeout_s=None, seed=1, bench_command=fake_bench)
    defaults.update(kw)
    return TuneOptions(**defaults)


def _study(tmp_path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/t.db")


def _names(tmp_path) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/t.db"))


def _complete_params(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(states=(TrialState.COMPLETE,))]


# ------------------------------------------------------------------- objective
def test_score_is_the_weighted_sum_of_normalised_speeds_and_recall():
    weights = ObjectiveSpec(w_decode=2.0, w_prefill=0.5, w_recall=1.0, recall_floor=0.9)
    base = Baseline(prefill_tok_s=1000.0, decode_tok_s=50.0)
    metrics = {"prefill_tok_s": {"samples": [1800, 2000, 2200], "median": 2000, "iqr": 200},
               "decode_tok_s": {"samples": [70, 75, 80], "median": 75, "iqr": 5}, "recall": 0.8}
    assert score(metrics, base, weights) == pytest.approx(2 * 75 / 50 + 0.5 * 2000 / 1000 + 0.8)
    assert score_samples(metrics, base, weights) == pytest.approx(
        [2 * 70 / 50 + 0.5 * 1.8 + 0.8, 2 * 75 / 50 + 0.5 * 2.0 + 0.8, 2 * 80 / 50 + 0.5 * 2.2 + 0.8])
    assert recall_violation(metrics, weights) == pytest.approx(0.1)  # infeasible: > 0
    assert recall_violation({**metrics, "recall": 0.95}, weights) < 0
    assert Baseline.from_metrics(metrics) == Baseline(2000.0, 75.0)
    with pytest.raises(ValueError, match="decode_tok_s"):
        Baseline.from_metrics({"prefill_tok_s": {"median": 1.0}, "decode_tok_s": {"median": 0.0}})


# -------------------------------------------------------------- the tuning loop
def test_tune_makes_one_study_per_context_with_the_baseline_first(tmp_path, fake_bench, capsys):
    spec = _spec(tmp_path, contexts=(64, 128))
    assert tune_and_report(spec, _options(tmp_path, fake_bench)) == 0
    names = _names(tmp_path)
    expected = [study_name("tiny", "cpu", ("queued",), c) for c in (64, 128)]
    assert expected == ["tiny/cpu/queued/L64", "tiny/cpu/queued/L128"] and names == sorted(expected)
    for context, name in zip((64, 128), expected):
        study = _study(tmp_path, name)
        trials = study.get_trials()
        assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
        first = trials[0]
        assert first.user_attrs["baseline"] is True and first.user_attrs["strategy"] == "baseline"
        assert first.params == {"workers": 1, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64}
        assert first.value == pytest.approx(3.0)  # 1 + 1 + recall 1.0: as fast as itself
        assert len(set(_complete_params(study))) == 5
        for t in trials:
            attrs = t.user_attrs
            assert {"strategy", "config", "metrics", "counters", "env", "stderr_tail", "wall_s", "timings"} <= set(attrs)
            assert attrs["config"]["context"] == context and attrs["config"]["device"] == "cpu"
            assert attrs["config"]["backend"] == "queued" and attrs["config"]["repeats"] == 3
            assert {k: attrs["config"][k] for k in t.params} == t.params
            assert "fake bench" in attrs["stderr_tail"]
            assert t.constraints == {"recall_floor": pytest.approx(-1.0)}
        assert {t.user_attrs["strategy"] for t in trials[1:]} <= {"random", "genetic", "bandit", "boltzmann"}
        ua = study.user_attrs
        assert ua["context"] == context and ua["shape"] == "tiny" and ua["device"] == "cpu"
        assert ua["backends"] == ["queued"] and ua["dtype"] == "float32"
        assert set(ua["fingerprint"]) == {"device_name", "torch", "project_version"}
        assert ua["baseline"]["decode_tok_s"] == pytest.approx(trials[0].user_attrs["metrics"]["decode_tok_s"]["median"])
        assert ua["spec"]["search"]["n_trials"] == 5
        conf = ua["confirmation"]
        # the fake's speed grows with workers: the tuned config wins beyond noise
        assert conf["verdict"] == "improved" and conf["beats_baseline"] is True
        assert conf["default"]["source"] == "tuned" and conf["winner"] == conf["default"]["trial"]
        assert conf["p_adjusted"] < 0.05 and len(conf["baseline"]["samples"]) == 6
        assert 1 <= len(conf["candidates"]) <= 3
        assert conf["winner"] in [c["trial"] for c in conf["candidates"]]
    out = capsys.readouterr()
    assert "L64 trial 1/5" in out.err and "[baseline]" in out.err and "ETA" in out.err
    # confirmation: 6 repeats in two processes of 3, each process's score shown
    assert out.err.count("(3 repeats): ok, score ") >= 4
    assert "becomes the default" in out.out


def test_warm_workers_measure_by_default_and_process_fresh_starts_one_per_trial(tmp_path, fake_bench):
    """One warm worker measures every trial of a study (one pid); `[trials] process =
    "fresh"` or `--process fresh` runs a process per trial; the trial says which."""
    assert tune_and_report(_spec(tmp_path), _options(tmp_path, fake_bench)) == 0
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    assert {t.user_attrs["process"] for t in trials} == {"warm"}
    assert len({t.user_attrs["timings"]["pid"] for t in trials}) == 1
    assert len({t.user_attrs["bench_pid"] for t in trials}) == 1
    fresh_spec = _spec(tmp_path, extra='[trials]\nprocess = "fresh"\n')
    assert fresh_spec.trials.process == "fresh"
    options = _options(tmp_path, fake_bench, storage=f"sqlite:///{tmp_path}/fresh.db")
    assert tune_and_report(fresh_spec, options) == 0
    trials = optuna.load_study(study_name="tiny/cpu/queued/L64", storage=options.storage).get_trials()
    assert {t.user_attrs["process"] for t in trials} == {"fresh"}
    assert len({t.user_attrs["timings"]["pid"] for t in trials}) == len(trials) == 5


def test_the_process_setting_is_checked_and_overridden_on_the_command_line(tmp_path):
    from autotune.spec import SpecError
    from autotune.commands.tune import add_arguments
    import argparse

    with pytest.raises(SpecError, match="process"):
        _spec(tmp_path, extra='[trials]\nprocess = "lukewarm"\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--study", "x.toml"]).process is None  # the spec decides
    assert parser.parse_args(["--study", "x.toml", "--process", "fresh"]).process == "fresh"


def test_flat_surface_keeps_the_baseline(tmp_path, fake_bench, monkeypatch):
    monkeypatch.setenv("FAKE_FLAT", "1")
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=4)) == 0
    conf = _study(tmp_path, "tiny/cpu/queued/L64").user_attrs["confirmation"]
    assert conf["verdict"] == "baseline" and conf["beats_baseline"] is False
    assert conf["default"] == {"trial": 0, "config": {"workers": 1, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64},
                               "source": "baseline"}


def test_resume_continues_to_the_budget_without_remeasuring(tmp_path, fake_bench):
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=3)) == 0
    before = {t.number: (t.params, t.value) for t in _study(tmp_path, "tiny/cpu/queued/L64").get_trials()}
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=6)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    trials = study.get_trials()
    assert len(trials) == 6
    assert {t.number: (t.params, t.value) for t in trials[:3]} == before
    assert sum(1 for t in trials if t.user_attrs.get("baseline")) == 1
    assert len(set(_complete_params(study))) == 6
    # A finished budget: a third run measures nothing and keeps the verdict.
    verdict = study.user_attrs["confirmation"]
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=6)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    assert len(study.get_trials()) == 6 and study.user_attrs["confirmation"] == verdict


def test_skip_confirmation_leaves_the_verdict_to_a_later_run(tmp_path, fake_bench, capsys):
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=4, confirm=False)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    assert "confirmation" not in study.user_attrs
    assert "confirmation skipped" in capsys.readouterr().out
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=4)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    assert len(study.get_trials()) == 4  # nothing measured twice in the search
    assert study.user_attrs["confirmation"]["verdict"] in ("improved", "baseline")


def test_stale_running_trials_are_failed_and_measured_again(tmp_path, fake_bench):
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=2)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    # What a kill -9 leaves: a RUNNING trial with its params, never told.
    params = {"workers": 4, "heads_per_band": 1, "chunk_size": 32, "T_inner": 16}
    study.enqueue_trial(params)
    cut = study.ask()
    for knob in params:
        cut.suggest_categorical(knob, study.user_attrs["space"][knob])
    assert study.get_trials()[cut.number].params == params
    assert study.get_trials()[cut.number].state == TrialState.RUNNING

    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=4)) == 0
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    stale = trials[cut.number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["stale"] is True
    assert stale.user_attrs["error_kind"] == "stale"
    again = [t for t in trials if t.user_attrs.get("requeued_from") == cut.number]
    assert len(again) == 1 and again[0].params == params and again[0].state == TrialState.COMPLETE
    # the stale trial does not count against the budget: 4 finished non-stale trials
    assert sum(1 for t in trials if t.state.is_finished() and not t.user_attrs.get("stale")) == 4


def test_failures_become_fail_trials_with_their_kind(tmp_path, fake_bench, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_T_INNER", "8")
    monkeypatch.setenv("FAKE_CRASH_HPB", "2")
    spec = _spec(tmp_path, extra="")
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=12)) == 0
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the seeded search should hit T_inner=8 or heads_per_band=2"
    for t in failed:
        kind = t.user_attrs["error_kind"]
        if t.params["heads_per_band"] == 2:
            assert kind == "crash" and "boom" in t.user_attrs["error_message"]
        else:
            assert kind == "numerical" and t.params["T_inner"] == 8
            assert t.user_attrs["error_message"] == "NaN in the outputs"
        assert "stderr_tail" in t.user_attrs and t.value is None
    assert all(t.params["T_inner"] != 8 and t.params["heads_per_band"] != 2
               for t in trials if t.state == TrialState.COMPLETE)


def test_a_trial_on_a_kernel_fallback_fails_with_its_kind_and_keeps_what_ran(tmp_path, fake_bench, monkeypatch):
    monkeypatch.setenv("FAKE_FALLBACK_T_INNER", "8")
    assert tune_and_report(_spec(tmp_path), _options(tmp_path, fake_bench, n_trials=12)) == 0
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    fell_back = [t for t in trials if t.params["T_inner"] == 8]
    assert fell_back, "the seeded search should hit T_inner=8"
    for t in fell_back:
        assert t.state == TrialState.FAIL and t.user_attrs["error_kind"] == "kernel_fallback"
        assert t.user_attrs["error_message"] == "a kernel fell back: chunkwise--triton -> chunkwise--fp32: forced"
        assert t.user_attrs["kernels"]["fallback"] and t.user_attrs["metrics"]["prefill_tok_s"]["median"] > 0
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and all(t.user_attrs["kernels"]["fallback"] is None for t in done)


def test_kernel_knobs_are_searched_with_the_knobs_and_reach_the_benchmark(tmp_path, fake_bench):
    spec = _spec(tmp_path, extra="[space.kernel]\nrows_max_k = [4096, 8192]\n")
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=10)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert study.user_attrs["space"]["rows_max_k"] == [4096, 8192]
    assert trials[0].params["rows_max_k"] == 4096  # the baseline: the kernels' default
    assert {t.params["rows_max_k"] for t in trials} == {4096, 8192}
    for t in trials:  # the benchmark got the trial's value (the fake echoes its request)
        assert t.user_attrs["config"]["kernel"] == {"rows_max_k": t.params["rows_max_k"]}


def test_batches_give_one_study_per_context_and_batch_and_batch_one_keeps_its_name(tmp_path, fake_bench):
    spec = _spec(tmp_path)
    spec = replace(spec, workload=replace(spec.workload, batches=(1, 16)))
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=3)) == 0
    assert _names(tmp_path) == ["tiny/cpu/queued/L64", "tiny/cpu/queued/L64/B16"]
    for name, batch in (("tiny/cpu/queued/L64", 1), ("tiny/cpu/queued/L64/B16", 16)):
        trials = _study(tmp_path, name).get_trials(states=(TrialState.COMPLETE,))
        assert trials and all(t.user_attrs["config"]["batch"] == batch for t in trials)


def test_recall_below_the_floor_is_a_violated_constraint(tmp_path, fake_bench, monkeypatch):
    monkeypatch.setenv("FAKE_LOW_RECALL_WORKERS", "4")
    spec = _spec(tmp_path, floor=0.5)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=10)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    low = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.params["workers"] == 4]
    assert low, "the seeded search should try workers=4"
    for t in low:
        assert t.constraints["recall_floor"] == pytest.approx(0.3)
    conf = study.user_attrs["confirmation"]
    assert all(c["config"]["workers"] != 4 for c in conf["candidates"])  # infeasible: never confirmed


def test_a_failing_baseline_ends_that_context_with_a_clear_error(tmp_path, fake_bench, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_CRASH_HPB", "4")  # the built-in default has heads_per_band = num_heads = 4
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench)) == 1
    out = capsys.readouterr().out
    assert "the baseline config" in out and "crash" in out and "boom" in out
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL


def test_search_stops_when_every_valid_config_is_measured(tmp_path, fake_bench, capsys):
    spec = _spec(tmp_path, extra="")
    spec = type(spec)(**{**spec.__dict__, "space": {"workers": (1, 2), "heads_per_band": (4,), "chunk_size": (64,), "T_inner": (64,)}})
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=10)) == 0
    # heads_per_band 4 of 4 heads = one band, so workers=2 is invalid: the baseline is the only config
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    assert len(trials) == 1
    assert "all 1 valid configs measured" in capsys.readouterr().out


def test_wall_time_budget_stops_the_search(tmp_path, fake_bench, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_SLEEP", "1.0")
    spec = _spec(tmp_path, top_k=0)
    start = time.monotonic()
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=None, timeout_s=2.5)) == 0
    assert time.monotonic() - start < 20
    n = len(_study(tmp_path, "tiny/cpu/queued/L64").get_trials())
    assert 1 <= n <= 3


def test_trial_timeout_adapts_to_the_baseline_and_is_capped(tmp_path, fake_bench):
    from autotune.study_search import Budget, StudySearch

    spec = _spec(tmp_path, extra="[trials]\ntimeout_factor = 5\ntimeout_min_s = 30\ntimeout_cap_s = 120\n")
    tuner = ContextTuner(spec, _options(tmp_path, fake_bench), 64, storage=None, location=None,
                         device_kind="cpu", device="cpu", fingerprint={}, stop=None)
    loop = StudySearch(tuner.session, budget=Budget(5, None), device="cpu", process="fresh")
    assert loop.trial_timeout(3) == 120  # no baseline yet: the cap
    for wall, expected in ((10.0, 50.0), (100.0, 120.0), (1.0, 30.0)):
        tuner.session.baseline_wall_s = wall
        assert loop.trial_timeout(3) == expected
    tuner.session.baseline_wall_s = 10.0
    assert loop.trial_timeout(6) == 100.0  # confirmation: twice the repeats, twice the time
    request = loop.request({"workers": 2, "heads_per_band": 1, "chunk_size": 32, "T_inner": 8}, 3, 50.0)
    assert request.time_limit_s < 50.0  # the child stops itself before the hard kill


# ------------------------------------------------------------ store safety
def test_fingerprint_mismatch_is_refused_and_new_study_starts_beside_it(tmp_path, fake_bench):
    spec = _spec(tmp_path)
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=2)) == 0
    study = _study(tmp_path, "tiny/cpu/queued/L64")
    study.set_user_attr("fingerprint", {**study.user_attrs["fingerprint"], "device_name": "Some Other GPU"})
    with pytest.raises(StoreError) as info:
        tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=3))
    message = str(info.value)
    assert "Some Other GPU" in message and "--new-study" in message and "tiny/cpu/queued/L64~2" in message
    assert len(_study(tmp_path, "tiny/cpu/queued/L64").get_trials()) == 2  # untouched

    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=2, new_study=True)) == 0
    assert _names(tmp_path) == ["tiny/cpu/queued/L64", "tiny/cpu/queued/L64~2"]
    # without the flag the newest study of the family is resumed
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=3)) == 0
    assert len(_study(tmp_path, "tiny/cpu/queued/L64~2").get_trials()) == 3
    assert len(_study(tmp_path, "tiny/cpu/queued/L64").get_trials()) == 2


def test_a_changed_measurement_spec_is_refused(tmp_path, fake_bench):
    assert tune_and_report(_spec(tmp_path), _options(tmp_path, fake_bench, n_trials=2)) == 0
    changed = _spec(tmp_path, extra="").__class__
    spec = _spec(tmp_path)
    spec = changed(**{**spec.__dict__, "workload": type(spec.workload)(contexts=(64,), repeats=9)})
    with pytest.raises(StoreError, match=r"workload.repeats \(3 -> 9\).*--new-study"):
        tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=3))


def test_adding_kernel_knobs_to_a_studied_spec_is_refused_on_resume(tmp_path, fake_bench):
    assert tune_and_report(_spec(tmp_path), _options(tmp_path, fake_bench, n_trials=2)) == 0
    with_kernel = _spec(tmp_path, extra="[space.kernel]\nrows_max_k = [4096, 8192]\n")
    with pytest.raises(StoreError, match=r"kernel_space.*--new-study"):
        tune_and_report(with_kernel, _options(tmp_path, fake_bench, n_trials=3))


def test_second_tuner_on_one_sqlite_file_gets_a_clear_error(tmp_path, fake_bench):
    spec = _spec(tmp_path)
    db = tmp_path / "t.db"
    with WriterLock(db):
        with pytest.raises(StoreError) as info:
            tune_and_report(spec, _options(tmp_path, fake_bench))
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and str(db) in message and "one tuner at a time" in message
    # the lock went with its holder: the next tuner runs
    assert tune_and_report(spec, _options(tmp_path, fake_bench, n_trials=2)) == 0


def test_writer_lock_is_released_when_its_holder_is_killed(tmp_path):
    db = tmp_path / "x.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from autotune.store.locks import WriterLock
        WriterLock(Path({str(db)!r})).acquire()
        print("locked", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match=f"pid {holder.pid}"):
        WriterLock(db).acquire()
    holder.kill()
    holder.wait()
    WriterLock(db).acquire().release()  # a stale lock file never blocks


@pytest.mark.parametrize(
    "url, needle",
    [
        ("not a url", "is not a database URL"),
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
        ("nosuchdb://host/db", "unknown database kind 'nosuchdb'"),
        ("postgresql+nosuchdriver://u@h/db", "unknown database kind"),
    ],
)
def test_bad_storage_urls_are_clear_errors(url, needle):
    with pytest.raises(StoreError, match=needle) as info:
        parse_storage_url(url)
    assert isinstance(info.value, UserError)


def test_relative_sqlite_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deep" / "er").mkdir(parents=True)  # a missing folder is an error, never created
    location = parse_storage_url("sqlite:///deep/er/autotune.db")
    assert location.sqlite_path == tmp_path / "deep" / "er" / "autotune.db"
    assert location.url == f"sqlite:///{tmp_path}/deep/er/autotune.db"
    assert parse_storage_url(f"sqlite:///{tmp_path}/abs.db").sqlite_path == tmp_path / "abs.db"


def test_unreachable_server_is_a_clear_error():
    from autotune.store.storage import open_storage

    pytest.importorskip("psycopg")
    location = parse_storage_url("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot open the store"):
        open_storage(location)


# ----------------------------------------------------------------- Ctrl-C
RUNNER = """
import sys
from autotune.spec import load_spec
from autotune.commands.tune import tune_and_report
from autotune.tune import TuneOptions
spec = load_spec(sys.argv[1])
sys.exit(tune_and_report(spec, TuneOptions(storage=sys.argv[2], n_trials=int(sys.argv[3]), timeout_s=None, seed=1,
                                bench_command=(sys.executable, sys.argv[4]))))
"""


def _start_tuner(tmp_path, fake_bench, n_trials: int, env_extra: dict[str, str]) -> subprocess.Popen:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, str(runner), str(tmp_path / "spec.toml"), f"sqlite:///{tmp_path}/t.db", str(n_trials), fake_bench[1]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _running_trial(tmp_path, name: str, min_number: int):
    def find():
        try:
            trials = _study(tmp_path, name).get_trials()
        except KeyError:
            return None
        running = [t for t in trials if t.state == TrialState.RUNNING and t.number >= min_number
                   and "bench_pid" in t.user_attrs]
        return running[0] if running else None
    return find


def test_ctrl_c_stops_after_the_running_trial(tmp_path, fake_bench):
    _spec(tmp_path, top_k=0)
    proc = _start_tuner(tmp_path, fake_bench, 6, {"FAKE_BENCH_SLEEP": "1.5"})
    trial = wait_for(_running_trial(tmp_path, "tiny/cpu/queued/L64", 1), 60, "trial 1 to run")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping after the running trial" in err
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    assert trials[trial.number].state == TrialState.COMPLETE  # finished, not killed
    assert len(trials) == trial.number + 1  # nothing started after it
    assert all(t.state.is_finished() for t in trials)
    assert "Run the same command to resume" in out


def test_second_ctrl_c_kills_the_trial_and_queues_it_again(tmp_path, fake_bench):
    _spec(tmp_path, top_k=0)
    proc = _start_tuner(tmp_path, fake_bench, 6, {"FAKE_BENCH_SLEEP": "60"})
    trial = wait_for(_running_trial(tmp_path, "tiny/cpu/queued/L64", 0), 60, "the baseline to run")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 15
    assert proc.returncode == 130, err
    assert "killing the running benchmark" in err
    pid = trial.user_attrs["bench_pid"]
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the benchmark's whole group is gone
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    killed = trials[trial.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["stale"] is True
    assert killed.user_attrs["error_kind"] == "interrupted"
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs == {"requeued_from": trial.number, "baseline": True}
    assert queued[0].system_attrs["fixed_params"] == killed.params


def test_a_warm_worker_killed_mid_trial_fails_that_trial_and_a_new_worker_takes_over(tmp_path, fake_bench):
    """kill -9 of the warm worker (not the tuner): its trial is a crash FAIL, as for a
    fresh benchmark process; the tuner starts another worker and spends the budget,
    measuring no config twice."""
    _spec(tmp_path, top_k=0)
    proc = _start_tuner(tmp_path, fake_bench, 5, {"FAKE_BENCH_SLEEP": "1"})
    trial = wait_for(_running_trial(tmp_path, "tiny/cpu/queued/L64", 1), 60, "a trial after the baseline to run")
    worker = trial.user_attrs["bench_pid"]
    os.killpg(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    trials = _study(tmp_path, "tiny/cpu/queued/L64").get_trials()
    killed = trials[trial.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["error_kind"] == "crash"
    assert "signal 9" in killed.user_attrs["error_message"]
    assert len(trials) == 5 and sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5  # nothing measured twice
    later = {t.user_attrs["bench_pid"] for t in trials[trial.number + 1:]}
    assert later and worker not in later  # a new worker measured the rest


# ------------------------------------------------- end to end, real benchmark
def _real_bench_ready() -> bool:
    try:
        import autotune.bench.measure  # noqa: F401
    except ImportError:
        return False
    return True


needs_bench = pytest.mark.skipif(not _real_bench_ready(), reason="the benchmark process is not built yet")


def _process_alive(pid: int) -> bool:
    """True while pid runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _autotune(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune", "tune", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@needs_bench
def test_cpu_quick_end_to_end_with_a_kill_9_mid_trial_and_resume(tmp_path):
    """The README's main job with the real benchmark: killed with SIGKILL in the middle
    of a trial, then the same command again. Both runs together stay within 3 minutes
    and leave one complete study per context length; the cut-off trial is failed as
    stale and measured again; nothing measured before the kill is lost or repeated."""
    spec = load_spec(ROOT / "studies" / "cpu-quick.toml")
    storage = f"sqlite:///{tmp_path}/quick.db"
    args = ("--study", "studies/cpu-quick.toml", "--storage", storage)
    first = f"tiny/cpu/queued/L{spec.workload.contexts[0]}"

    def running_after_a_complete_trial():
        try:
            trials = optuna.load_study(study_name=first, storage=storage).get_trials()
        except KeyError:
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "bench_pid" in t.user_attrs]
        return (done, running[0]) if done and running else None

    start = time.monotonic()
    proc = _autotune(*args)
    try:
        done_before, victim = wait_for(running_after_a_complete_trial, 150, "a trial running after the baseline")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    # The orphaned benchmark, in its own session, notices that its tuner is gone and
    # stops with everything it started, instead of running on to its time limit.
    orphan = victim.user_attrs["bench_pid"]
    wait_for(lambda: not _process_alive(orphan), 10, f"the orphaned benchmark (pid {orphan}) to stop")
    before = {t.number: (t.params, t.value) for t in done_before}
    assert optuna.load_study(study_name=first, storage=storage).get_trials()[victim.number].state == TrialState.RUNNING

    proc = _autotune(*args)
    out, err = proc.communicate(timeout=240)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, err[-3000:]
    assert f"trial(s) {victim.number} were cut off" in err
    assert elapsed < 180, f"took {elapsed:.0f} s"
    print(f"cpu-quick with a kill -9 and resume: {elapsed:.1f} s")

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == sorted(f"tiny/cpu/queued/L{c}" for c in spec.workload.contexts)
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials()
        assert all(t.state.is_finished() for t in trials)
        assert sum(1 for t in trials if not t.user_attrs.get("stale")) == spec.search.n_trials
        assert trials[0].user_attrs["baseline"] is True and trials[0].state == TrialState.COMPLETE
        assert sum(1 for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE) == 1
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(set(_complete_params(study))) == len(complete) >= 2  # nothing measured twice
        for t in complete:
            metrics = t.user_attrs["metrics"]
            assert metrics["decode_tok_s"]["median"] > 0 and metrics["prefill_tok_s"]["median"] > 0
            assert 0.0 <= metrics["recall"] <= 1.0
            assert t.user_attrs["env"]["device_name"] == study.user_attrs["fingerprint"]["device_name"]
            assert t.user_attrs["counters"]["kernel_calls"] > 0
        assert study.user_attrs["confirmation"]["verdict"] in ("improved", "baseline")

    trials = optuna.load_study(study_name=first, storage=storage).get_trials()
    stale = trials[victim.number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["stale"] is True
    again = [t for t in trials if t.user_attrs.get("requeued_from") == victim.number]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE and again[0].params == victim.params
    assert {n: (trials[n].params, trials[n].value) for n in before} == before
