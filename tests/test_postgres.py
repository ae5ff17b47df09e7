"""Several tuners on one PostgreSQL store, tested against a real server.

The module starts its own PostgreSQL (Debian's postgresql package: initdb into a
temporary folder, the server on a free loopback port; as root it runs as the
`postgres` user) and stops it at the end, also when a test fails. With CI=true a
missing PostgreSQL fails the tests instead of skipping them.

- the named locks: concurrent study creation and stale-trial recovery from several
  connections make one study and queue each config once;
- two tuner processes with a fake benchmark share a study without measuring any config
  twice and agree on the best;
- end to end: two `autotune tune` processes with the real benchmark, one killed with
  SIGKILL in the middle of a trial and restarted.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tiny_study import tiny_spec_text, wait_for

ROOT = Path(__file__).resolve().parents[1]
FAKE_BENCH = ROOT / "tests" / "fake_bench.py"

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------- the server
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user then."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "server.log"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(_as_server_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "autotune",
                                        "--auth=trust", "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True, timeout=120)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                _as_server_user([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=100"]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text()[-2000:]}")
                time.sleep(0.2)

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="autotune", dbname=database,
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://autotune@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    bindir = _postgres_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        psycopg = None
    missing = ("PostgreSQL (apt-get install postgresql)" if bindir is None else
               "the psycopg driver (pip install 'xlstm-autotune[dev]')" if psycopg is None else None)
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing} is missing; .ci/run installs it")
        pytest.skip(f"{missing} is not installed")
    srv = PostgresServer(bindir)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


_counter = iter(range(10**6))


@pytest.fixture
def pg_url(server) -> str:
    """A fresh database for each test."""
    name = f"t{os.getpid()}_{next(_counter)}"
    server.execute(f"CREATE DATABASE {name}")
    return server.url(name)


# ------------------------------------------------------------- named locks
def _all_at_once(n: int, work) -> list:
    """Run work(i) in n threads released together; their results, or raise the first error."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


def test_workers_opening_a_fresh_database_together_all_get_the_store(pg_url):
    from autotune.store.storage import open_storage, parse_storage_url

    location = parse_storage_url(pg_url)
    storages = _all_at_once(6, lambda i: open_storage(location))  # each creates Optuna's tables
    assert all(s.get_all_studies() == [] for s in storages)


def test_concurrent_workers_create_one_study_with_its_attrs(pg_url):
    from autotune.store.locks import NamedLocks
    from autotune.store.storage import open_study, parse_storage_url, open_storage

    location = parse_storage_url(pg_url)
    open_storage(location)  # the tables; each worker below opens its own storage and connections
    fingerprint = {"device_name": "cpu", "torch": "x", "project_version": "y"}

    def open_as_worker(i: int, locked: bool):
        storage = open_storage(location)
        locks = NamedLocks.for_storage(storage, shared=True)
        base = "tiny/cpu/queued/L64" + ("" if locked else "-unlocked")
        hold = locks.hold(f"create:{base}") if locked else _nothing()
        with hold:
            opened = open_study(storage, base, fingerprint=fingerprint, identity={"k": 1}, attrs={"space": {}},
                                sampler=optuna.samplers.RandomSampler(), new_study=False)
        return opened.study.study_name, opened.created

    for locked in (True, False):  # the lock makes it orderly; without it, no crash either
        results = _all_at_once(6, lambda i: open_as_worker(i, locked))
        names = {name for name, _ in results}
        assert len(names) == 1, results
        if locked:
            assert sum(created for _, created in results) == 1
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(pg_url)}
    assert sorted(summaries) == ["tiny/cpu/queued/L64", "tiny/cpu/queued/L64-unlocked"]
    assert summaries["tiny/cpu/queued/L64"].user_attrs["fingerprint"] == fingerprint


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_concurrent_recovery_queues_each_cut_off_config_once(pg_url):
    from autotune.store.locks import NamedLocks
    from autotune.store.recovery import recover_stale_trials

    study = optuna.create_study(study_name="s", storage=pg_url, direction="maximize")
    cut = []
    for pid in (1, 2, 3):
        trial = study.ask()
        trial.suggest_categorical("workers", [1, 2, 4])
        trial.set_user_attr("worker", {"host": "gone-host", "pid": pid, "pidns": None})
        trial.set_user_attr("heartbeat", time.time() - 3600)
        cut.append(trial.number)

    def recover(i: int) -> list[int]:
        storage = optuna.storages.RDBStorage(pg_url)
        own = optuna.load_study(study_name="s", storage=storage)
        with NamedLocks.for_storage(storage, shared=True).hold("study:s"):
            return recover_stale_trials(storage, own, single_writer=False, lease_s=60)

    results = _all_at_once(5, recover)
    assert sorted(n for r in results for n in r) == cut  # each failed by exactly one worker
    trials = study.get_trials()
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["requeued_from"] for t in queued) == cut  # and queued once
    by_number = {t.number: t for t in trials}
    assert all(t.system_attrs["fixed_params"] == by_number[t.user_attrs["requeued_from"]].params for t in queued)


HOLDER = """
import sys, time
from autotune.store.locks import NamedLocks
with NamedLocks(sys.argv[1]).hold("study:s"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_killed_holder_leaves_no_lock_behind(tmp_path, pg_url):
    import sqlalchemy as sa

    from autotune.store.locks import NamedLocks

    (tmp_path / "holder.py").write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), pg_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = NamedLocks(pg_url)
        acquired = threading.Event()

        def take() -> None:
            with locks.hold("study:s"):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not acquired.wait(1.0)  # held by the other process
        holder.kill()
        assert acquired.wait(10.0)  # its connection died with it, and the lock with that
        taker.join()
        with locks._engine.connect() as conn:  # the server probes lock connections often
            assert conn.execute(sa.text("SHOW tcp_keepalives_idle")).scalar() in ("30", "30s")
    finally:
        holder.kill()
        holder.communicate()


# --------------------------------------------- two tuners, fake benchmark
RUNNER = """
import sys
from autotune.spec import load_spec
from autotune.commands.tune import tune_and_report
from autotune.tune import TuneOptions
spec = load_spec(sys.argv[1])
sys.exit(tune_and_report(spec, TuneOptions(storage=sys.argv[2], n_trials=int(sys.argv[3]), timeout_s=None, seed=None,
                                bench_command=(sys.executable, sys.argv[4]))))
"""

BEST = re.compile(r"search max \(unconfirmed\) (\S+) \(baseline \S+\): trial (\d+)")


def _complete_configs(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]


def test_two_tuners_share_a_study_without_measuring_a_config_twice(tmp_path, pg_url):
    (tmp_path / "spec.toml").write_text(tiny_spec_text(confirmation="top_k = 1\nrepeats = 4"))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "FAKE_BENCH_SLEEP": "0.1"}
    argv = [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "spec.toml"), pg_url, "10", str(FAKE_BENCH)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=150) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="tiny/cpu/queued/L64", storage=pg_url)
    trials = study.get_trials()
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    configs = _complete_configs(trials)
    assert len(set(configs)) == len(configs)  # no config measured twice across the workers
    by_worker = {t.user_attrs["worker"]["pid"] for t in trials}
    assert by_worker == {p.pid for p in procs}  # both measured
    assert sum(1 for t in trials if t.user_attrs.get("baseline")) == 1
    bests = [BEST.search(out).groups() for out, _ in outputs]
    assert bests[0] == bests[1]  # both report the same best, after the other's trials
    assert study.user_attrs["confirmation"]["n_finished"] == 10  # confirmed once, over all trials
    assert sum("  verdict: " in out for out, _ in outputs) == 2


# ------------------------------------------------ end to end, real benchmark
QUICK = ROOT / "studies" / "cpu-quick.toml"


def _quick_spec(tmp_path) -> Path:
    """cpu-quick with one context length and no confirmation (the fake-benchmark test above
    covers it): two workers, a kill and a restart stay within the time this test may take."""
    text = QUICK.read_text()
    text = re.sub(r"(?m)^contexts = .*$", "contexts = [128]", text)
    text = re.sub(r"(?m)^top_k = .*$", "top_k = 0", text)
    path = tmp_path / "two-workers.toml"
    path.write_text(text)
    return path


def _autotune(spec: Path, storage: str, n_trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", "tune", "--study", str(spec), "--storage", storage,
         "--n-trials", str(n_trials)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_tuners_with_a_kill_9_mid_trial_and_a_restart(tmp_path, pg_url):
    """Two `autotune tune` processes on cpu-quick (one context); worker A is killed with
    SIGKILL while it measures a trial after the baseline, then started again. Worker B's
    running trial is left alone; A's is failed as stale and measured again once; every
    config is measured once; both report the same best config."""
    spec = _quick_spec(tmp_path)
    name = "tiny/cpu/queued/L128"
    n_trials = 4
    start = time.monotonic()
    a = _autotune(spec, pg_url, n_trials)
    b = _autotune(spec, pg_url, n_trials)
    procs = [a, b]
    try:
        def a_running_after_the_baseline():
            try:
                trials = optuna.load_study(study_name=name, storage=pg_url).get_trials()
            except KeyError:
                return None
            if not any(t.state == TrialState.COMPLETE and t.user_attrs.get("baseline") for t in trials):
                return None
            mine = [t for t in trials if t.state == TrialState.RUNNING and "bench_pid" in t.user_attrs
                    and t.user_attrs.get("worker", {}).get("pid") == a.pid]
            return mine[0] if mine else None

        victim = wait_for(a_running_after_the_baseline, 150, "worker A to run a trial after the baseline")
        a.send_signal(signal.SIGKILL)
        a.communicate()
        # Its benchmark is in its own session and never touches the store; stop it too, as
        # a dead machine would, so that it does not take the CPU from the others.
        try:
            os.killpg(victim.user_attrs["bench_pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        a2 = _autotune(spec, pg_url, n_trials)
        procs.append(a2)
        out_b, err_b = b.communicate(timeout=240)
        out_a, err_a = a2.communicate(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    elapsed = time.monotonic() - start
    assert b.returncode == 0, err_b[-3000:]
    assert a2.returncode == 0, err_a[-3000:]
    print(f"two workers with a kill -9 and a restart: {elapsed:.1f} s")

    study = optuna.load_study(study_name=name, storage=pg_url)
    trials = study.get_trials()
    assert all(t.state.is_finished() for t in trials)
    # The killed trial: failed as stale (by the restarted A or by B), measured again once.
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["stale"] is True
    again = [t for t in trials if t.user_attrs.get("requeued_from") == victim.number]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE and again[0].params == killed.params
    # Only the killed worker's trial was stale: B's trials were never taken from it.
    stale = [t for t in trials if t.user_attrs.get("stale")]
    assert [t.number for t in stale] == [victim.number]
    # Every config measured once; the budget counts finished, non-stale trials.
    configs = _complete_configs(trials)
    assert len(set(configs)) == len(configs) == n_trials
    assert b.pid in {t.user_attrs["worker"]["pid"] for t in trials if t.state == TrialState.COMPLETE}
    assert sum(1 for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE) == 1
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["metrics"]["decode_tok_s"]["median"] > 0
    # Both agree on the best, and `autotune best` reads the same from the store.
    best_a, best_b = BEST.search(out_a), BEST.search(out_b)
    assert best_a and best_b and best_a.groups() == best_b.groups(), (out_a, out_b)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert int(best_a.group(2)) == best.number
    shown = subprocess.run([sys.executable, "-m", "autotune", "best", "--storage", pg_url],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"{best.value:.3f}" in shown.stdout or str(best.number) in shown.stdout, shown.stdout
