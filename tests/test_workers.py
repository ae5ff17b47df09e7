"""Several workers on one store, without a database server: `--gpus` (one benchmark
child per GPU at a time, trials spread over the GPUs), worker liveness and the
heartbeat lease, a trial taken over by another worker, the GPU-model fingerprint.

The tuner runs in-process against tests/fake_bench.py; PostgreSQL is in test_postgres.py.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import UserError
from autotune.spec import load_spec
from autotune.store.recovery import is_stale, recover_stale_trials
from autotune.commands.tune import tune_and_report
from autotune.tune import TuneOptions
from autotune.workers import gpu_slots, identity, is_gone, parse_gpus
from tiny_study import tiny_spec_text

ROOT = Path(__file__).resolve().parents[1]
FAKE_BENCH = (sys.executable, str(ROOT / "tests" / "fake_bench.py"))
STUDY = "tiny/cpu/queued/L64"

def _spec(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(tiny_spec_text())
    return load_spec(path)


def _options(tmp_path, **kw) -> TuneOptions:
    values = dict(storage=f"sqlite:///{tmp_path}/t.db", n_trials=None, timeout_s=None, seed=1,
                  bench_command=FAKE_BENCH)
    values.update(kw)
    return TuneOptions(**values)


def _trials(tmp_path):
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/t.db").get_trials()


# ------------------------------------------------------------------ --gpus
def test_gpus_run_one_child_per_gpu_at_a_time_and_in_parallel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_BENCH_SLEEP", "0.4")
    assert tune_and_report(_spec(tmp_path), _options(tmp_path, n_trials=7, gpus=(0, 1))) == 0
    trials = _trials(tmp_path)
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 7
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # no config measured twice by the two threads
    by_gpu = {0: [], 1: []}
    for t in trials:
        gpu = t.user_attrs["gpu"]
        assert t.user_attrs["env"]["cuda_visible_devices"] == str(gpu)  # set in the child's environment
        by_gpu[gpu].append((t.user_attrs["timings"]["started"], t.user_attrs["timings"]["ended"]))
    assert by_gpu[0] and by_gpu[1], by_gpu  # trials spread over both GPUs
    for spans in by_gpu.values():  # one child per GPU at a time
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    overlapping = [(a, b) for a, b in itertools.product(by_gpu[0], by_gpu[1]) if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "the two GPUs' children never ran at the same time"
    out, err = capsys.readouterr()
    assert " on gpu 0 " in err and " on gpu 1 " in err
    assert f"trials per GPU 0: {len(by_gpu[0])}, 1: {len(by_gpu[1])}" in out


def test_gpu_list_parsing():
    assert parse_gpus("0,1") == (0, 1) and parse_gpus(" 3 ") == (3,)
    for bad in ("", "a,b", "0,0", "-1", "0;1"):
        with pytest.raises(ValueError):
            parse_gpus(bad)


def _fake_cuda(monkeypatch, names: list[str]):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: names[i])
    return SimpleNamespace(type="cuda", index=0)


def test_gpu_slots_fingerprint_the_model_and_refuse_mixed_or_missing_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = _fake_cuda(monkeypatch, ["NVIDIA A10", "NVIDIA H200", "NVIDIA H200"])
    slots, model = gpu_slots((1, 2), device, "cuda")
    assert model == "NVIDIA H200" and [(s.gpu, s.visible) for s in slots] == [(1, "1"), (2, "2")]
    assert slots[1].env()["CUDA_VISIBLE_DEVICES"] == "2"
    with pytest.raises(UserError, match="mixes GPU models"):
        gpu_slots((0, 1), device, "cuda")
    with pytest.raises(UserError, match="has 3"):
        gpu_slots((1, 3), device, "cuda")
    with pytest.raises(UserError, match="device = 'cuda'"):
        gpu_slots((1, 2), device, "cuda:1")
    # Our own CUDA_VISIBLE_DEVICES renumbers the GPUs; the children get the physical ids.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    assert [s.visible for s in gpu_slots((1, 2), device, "cuda")[0]] == ["6", "7"]
    with pytest.raises(UserError, match="needs a CUDA device"):
        gpu_slots((0,), SimpleNamespace(type="mps", index=None), "mps")
    no_gpus, model = gpu_slots((), device, "cuda")
    assert model is None and no_gpus[0].env() is None  # without --gpus nothing changes


# ------------------------------------------------------- liveness, leases
def test_a_worker_is_gone_only_when_its_process_on_this_host_has_exited():
    me = identity()
    assert not is_gone(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert is_gone({**me, "pid": child.pid})
    assert not is_gone({**me, "pid": child.pid, "host": socket.gethostname() + "-elsewhere"})
    assert not is_gone({**me, "pid": child.pid, "pidns": "pid:[1]"})  # another container
    assert not is_gone(None) and not is_gone({"host": me["host"]})


def _running_trial(study: optuna.Study, **user_attrs) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.suggest_categorical("workers", [1, 2])
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    return study.get_trials()[trial.number]


def test_on_a_shared_store_only_trials_of_stopped_workers_are_stale(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/lease.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    elsewhere = {"host": "another-host", "pid": 1, "pidns": None}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    live_remote = _running_trial(study, worker=elsewhere, heartbeat=now - 20)
    silent_remote = _running_trial(study, worker=elsewhere, heartbeat=now - 200)
    live_here = _running_trial(study, worker=identity(), heartbeat=now - 200)  # us: alive, lease decides
    dead_here = _running_trial(study, worker={**identity(), "pid": dead.pid}, heartbeat=now)
    assert not is_stale(live_remote, single_writer=False, lease_s=60)
    assert is_stale(silent_remote, single_writer=False, lease_s=60)
    assert not is_stale(live_here, single_writer=False, lease_s=300)
    assert is_stale(dead_here, single_writer=False, lease_s=300)
    assert is_stale(live_remote, single_writer=True)  # the SQLite writer lock: every RUNNING one

    assert recover_stale_trials(storage, study, single_writer=False, lease_s=60) == [
        silent_remote.number, live_here.number, dead_here.number]
    trials = study.get_trials()
    assert trials[live_remote.number].state == TrialState.RUNNING
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["requeued_from"] for t in queued) == [
        silent_remote.number, live_here.number, dead_here.number]
    # A second pass finds nothing new and queues nothing twice.
    assert recover_stale_trials(storage, study, single_writer=False, lease_s=60) == []
    assert len([t for t in study.get_trials() if t.state == TrialState.WAITING]) == 3


def test_a_stale_trial_failed_before_its_config_was_queued_is_queued_by_the_next_recovery(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/half.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    cut = _running_trial(study, stale=True, error_kind="stale")
    storage.set_trial_state_values(cut._trial_id, TrialState.FAIL)  # a kill right after failing it
    recover_stale_trials(storage, study, single_writer=True)
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs["requeued_from"] == cut.number
    assert queued[0].system_attrs["fixed_params"] == cut.params


def test_a_trial_taken_over_by_another_worker_is_dropped_and_measured_again(tmp_path, monkeypatch, capsys):
    """A worker whose trial another worker failed as stale (its heartbeat lease ran out)
    stops that benchmark at its next heartbeat and drops the result; the queued copy is
    measured once."""
    monkeypatch.setenv("FAKE_BENCH_SLEEP", "1.5")
    spec = _spec(tmp_path)
    storage_url = f"sqlite:///{tmp_path}/t.db"
    storage = optuna.storages.RDBStorage(storage_url)  # the tables, before two threads race to make them
    taken = {}

    def take_over_trial_1():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage_url)
            except KeyError:
                time.sleep(0.05)
                continue
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and t.number == 1
                       and "bench_pid" in t.user_attrs]
            if running:
                taken["numbers"] = recover_stale_trials(storage, study, single_writer=True)
                return
            time.sleep(0.05)

    thief = threading.Thread(target=take_over_trial_1)
    thief.start()
    assert tune_and_report(spec, _options(tmp_path, n_trials=3, lease_s=0.5)) == 0
    thief.join()
    assert taken["numbers"] == [1]
    trials = _trials(tmp_path)
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["stale"] is True
    again = [t for t in trials if t.user_attrs.get("requeued_from") == 1]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE and again[0].params == trials[1].params
    assert "trial 1 was failed by another worker" in capsys.readouterr().err


def test_bad_gpu_lists_are_refused_by_the_command_line(capsys):
    from autotune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tune", "--study", "studies/cpu-quick.toml", "--gpus", "0,0"])
    assert exc.value.code == 2 and "a GPU is listed twice" in capsys.readouterr().err


def test_a_second_tuner_on_one_sqlite_file_stops_with_one_clear_line(tmp_path):
    """SQLite keeps one writer: several workers need a server store, and the message says so."""
    from autotune.store.locks import WriterLock

    _spec(tmp_path)
    db = tmp_path / "t.db"
    with WriterLock(db):
        second = subprocess.run(
            [sys.executable, "-m", "autotune", "tune", "--study", str(tmp_path / "spec.toml"),
             "--storage", f"sqlite:///{db}", "--n-trials", "2"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    assert second.returncode == 2
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"pid {os.getpid()}" in second.stderr and "PostgreSQL" in second.stderr
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []  # nothing written
