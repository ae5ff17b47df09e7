"""Careless inputs to `autotune`: each is one line naming the fix, and nothing is created
or lost. Also what a tune says at its start and its end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.cli import main
from autotune.spec import load_spec
from autotune.store.storage import StoreError, open_study
from autotune.store.locks import WriterLock
from autotune.commands.tune import tune_and_report
from autotune.tune import TuneOptions
from test_tune import FAKE_BENCH
from tiny_study import tiny_spec_text

ROOT = Path(__file__).resolve().parents[1]


def _write_spec(tmp_path, space: str | None = None, storage: str | None = None) -> Path:
    text = tiny_spec_text(search="n_trials = 4\nseed = 1", confirmation="top_k = 2\nrepeats = 4")
    if space is not None:
        head, rest = text.split("[space]")
        text = head + "[space]\n" + space + "\n[objective]" + rest.split("[objective]")[1]
    if storage is not None:
        text = f'storage = "{storage}"\n' + text
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("space, key, valid", [
    ("workers = [1, 2]\nheads_per_band = [1, 2]\nchunk_size = [16, 32]\nT_inner = [3, 5]",
     "[space] T_inner: 3, 5 can never run", "valid values: 1, 2, 4, 8, 16, 32, 64"),
    ("workers = [1]\nheads_per_band = [3]\nchunk_size = [16, 32]\nT_inner = [8, 16]",
     "[space] heads_per_band: 3 can never run for shape 'tiny'", "divide the model's 4 heads; valid values: 1, 2, 4"),
])
def test_impossible_space_values_name_the_key_and_the_valid_values(tmp_path, monkeypatch, capsys, space, key, valid):
    spec = _write_spec(tmp_path, space=space, storage="sqlite:///s.db")
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--study", str(spec)]) == 2
    err = _one_line_error(capsys)
    assert key in err and valid in err
    assert not (tmp_path / "s.db").exists()


def test_a_store_in_a_missing_folder_is_refused_not_created(tmp_path, capsys):
    spec = _write_spec(tmp_path)
    target = tmp_path / "no" / "such" / "x.db"
    assert main(["tune", "--study", str(spec), "--storage", f"sqlite:///{target}"]) == 2
    err = _one_line_error(capsys)
    assert f"the folder {target.parent} of the SQLite store does not exist" in err
    assert "mkdir -p" in err and "--storage" in err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["tune", "best"])
def test_postgresql_without_its_driver_names_the_extra(tmp_path, command):
    # Shadow the drivers with packages that fail to import, as on a machine without them.
    for name in ("psycopg", "psycopg2"):
        (tmp_path / "nodriver" / name).mkdir(parents=True)
        (tmp_path / "nodriver" / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('No module named {name}', name={name!r})\n")
    spec = _write_spec(tmp_path)
    args = ["--storage", "postgresql://user:secret@localhost/autotune"]
    args = ["--study", str(spec), *args] if command == "tune" else args
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "nodriver"), str(ROOT)]))
    done = subprocess.run([sys.executable, "-m", "autotune", command, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "pip install 'xlstm-autotune[postgres]'" in err and "secret" not in err


def test_a_changed_spec_names_only_what_changed(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    a = load_spec(_write_spec(tmp_path))
    changed = (tmp_path / "spec.toml").read_text().replace("repeats = 3", "repeats = 3\nnew_tokens = 16")
    (tmp_path / "spec.toml").write_text(changed)
    b = load_spec(tmp_path / "spec.toml")
    kwargs = dict(fingerprint={"device_name": "cpu"}, attrs={}, sampler=optuna.samplers.RandomSampler(), new_study=False)
    open_study(storage, "tiny/cpu/queued/L64", identity=a.identity(), **kwargs)
    with pytest.raises(StoreError) as caught:
        open_study(storage, "tiny/cpu/queued/L64", identity=b.identity(), **kwargs)
    message = str(caught.value)
    assert "differs in workload.new_tokens (32 -> 16); its trials" in message
    assert "its stored settings" not in message


def test_a_second_tuner_is_refused_before_the_heavy_imports(tmp_path):
    spec = _write_spec(tmp_path, storage=f"sqlite:///{tmp_path / 'busy.db'}")
    with WriterLock(tmp_path / "busy.db"):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "autotune", "tune", "--study", str(spec)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert f"pid {os.getpid()}" in done.stderr and "one tuner at a time" in done.stderr
    # The refusal comes from the standard library alone: neither torch nor Optuna loaded.
    probe = subprocess.run([sys.executable, "-c", (
        "import sys, fcntl, os\n"
        f"fd = os.open({str(tmp_path / 'busy.db-lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"  # held by this process: a fresh open conflicts
        "from autotune.cli import main\n"
        f"code = main(['tune', '--study', {str(spec)!r}])\n"
        "heavy = [m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules]\n"
        "print(code, heavy)\n")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert probe.stdout.strip() == "2 []", probe.stdout + probe.stderr
    assert elapsed < 2.0, f"refused after {elapsed:.1f} s"


def test_a_tune_names_its_store_first_and_ends_with_what_to_run_next(tmp_path, capsys):
    spec = load_spec(_write_spec(tmp_path))
    store = tmp_path / "t.db"
    options = TuneOptions(storage=f"sqlite:///{store}", n_trials=4, timeout_s=None, seed=1,
                          bench_command=(sys.executable, str(FAKE_BENCH)))
    assert tune_and_report(spec, options) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == f"store: sqlite:///{store}"
    assert "search max (unconfirmed)" in out and "  verdict: " in out
    assert f"Every trial is in the store sqlite:///{store}" in out
    for command in ("best", "export", "report", "dashboard"):
        assert f"  autotune {command} --study {spec.path} --storage 'sqlite:///{store}'" in out
    study = optuna.load_study(study_name="tiny/cpu/queued/L64", storage=f"sqlite:///{store}")
    assert study.metric_names == ["score"]
    verdict = study.user_attrs["verdict"]
    assert verdict.startswith(("Trial ", "The baseline stays the default")) and verdict in out
    from optuna_dashboard import get_note

    assert verdict in get_note(study)


@pytest.fixture
def without_ray(monkeypatch):
    """As on an install without the `ray` extra: Ray cannot be found."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))


def test_the_ray_backend_without_ray_names_the_extra(tmp_path, capsys, without_ray):
    from autotune.bench.config import BenchRequest
    from autotune.bench.errors import InvalidConfig
    from schedulers import Knobs, make_scheduler

    extra = "pip install 'xlstm-autotune[ray]'"
    spec = _write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('backends = ["queued"]', 'backends = ["queued", "ray"]'))
    assert main(["tune", "--study", str(spec)]) == 2
    err = _one_line_error(capsys)
    assert "[model] backends: the ray backend needs Ray, which is not installed" in err and extra in err
    with pytest.raises(InvalidConfig, match=r"backend: the ray backend needs Ray.*xlstm-autotune\[ray\]"):
        BenchRequest.from_dict({"shape": "tiny", "backend": "ray"})
    with pytest.raises(ValueError, match=r"xlstm-autotune\[ray\]"):
        make_scheduler("ray", Knobs(workers=1, heads_per_band=4, chunk_size=16, T_inner=16))
    assert BenchRequest.from_dict({"shape": "tiny", "backend": "queued"}).backend == "queued"
