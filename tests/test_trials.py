"""The trial runner: one benchmark child per config, its result or a synthesized error.

These tests point run_benchmark at small fake benchmark scripts (the real benchmark is
exercised end to end in test_tune.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from autotune.trials import parse_result, run_benchmark

CONFIG = {"shape": "tiny", "workers": 2, "chunk_size": 32}


def _script(tmp_path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return (sys.executable, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but is not reaped yet: it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ok_result_is_the_last_stdout_line_and_stderr_tail_is_kept(tmp_path):
    cmd = _script(tmp_path, "ok.py", """
        import json, sys
        cfg = json.loads(sys.argv[-1])
        print("noise on stdout before the result")
        for i in range(2000):
            print(f"log line {i}", file=sys.stderr)
        print(json.dumps({"schema_version": 1, "status": "ok", "config": cfg,
                          "metrics": {"decode_tok_s": {"samples": [1, 2, 3], "median": 2, "iqr": 1}}}))
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert outcome.ok and outcome.returncode == 0
    assert outcome.result.config == CONFIG  # the config travelled as the JSON argument
    assert outcome.result.metrics["decode_tok_s"]["median"] == 2
    assert outcome.stderr_tail.endswith("log line 1999\n")
    assert "log line 0\n" not in outcome.stderr_tail  # only the tail is kept
    assert len(outcome.stderr_tail) <= 4100
    assert outcome.error_kind is None and outcome.wall_s > 0


def test_child_error_result_keeps_its_kind(tmp_path):
    cmd = _script(tmp_path, "err.py", """
        import json, sys
        print(json.dumps({"status": "error", "error": {"kind": "oom", "message": "out of memory"}}))
        sys.exit(4)
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert not outcome.ok
    assert outcome.error_kind == "oom" and outcome.error_message == "out of memory"
    assert outcome.returncode == 4


def test_child_dying_without_a_result_is_a_crash_naming_the_cause(tmp_path):
    cmd = _script(tmp_path, "crash.py", """
        import sys
        print("Traceback: something broke", file=sys.stderr)
        sys.exit(3)
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert outcome.error_kind == "crash"
    assert "exited with code 3" in outcome.error_message
    assert "something broke" in outcome.error_message
    assert outcome.result.status == "error"


def test_child_killed_by_a_signal_is_a_crash(tmp_path):
    cmd = _script(tmp_path, "segv.py", """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert outcome.error_kind == "crash" and "signal 9" in outcome.error_message


def test_unparseable_last_line_is_a_crash(tmp_path):
    cmd = _script(tmp_path, "garbage.py", """
        print('{"status": "ok"')
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert outcome.error_kind == "crash" and "without a result line" in outcome.error_message


def test_ok_with_nonzero_exit_is_not_trusted(tmp_path):
    cmd = _script(tmp_path, "liar.py", """
        import sys
        print('{"status": "ok", "metrics": {}}')
        sys.exit(1)
    """)
    outcome = run_benchmark(CONFIG, timeout_s=60, command=cmd)
    assert outcome.error_kind == "crash"


def test_stdin_is_closed(tmp_path):
    cmd = _script(tmp_path, "stdin.py", """
        import json, sys
        data = sys.stdin.read()  # would hang forever on an open terminal/pipe
        print(json.dumps({"status": "ok", "stdin": data}))
    """)
    outcome = run_benchmark(CONFIG, timeout_s=30, command=cmd)
    assert outcome.ok and outcome.result.raw["stdin"] == ""


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    cmd = _script(tmp_path, "hang.py", f"""
        import subprocess, sys, time
        # a grandchild that ignores nothing and would outlive a plain kill of the child
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        print("started", file=sys.stderr, flush=True)
        time.sleep(300)
    """)
    start = time.monotonic()
    outcome = run_benchmark(CONFIG, timeout_s=3, command=cmd)
    elapsed = time.monotonic() - start
    assert outcome.error_kind == "timeout"
    assert "3 s" in outcome.error_message
    assert elapsed < 3 + 3 + 5  # limit + TERM grace + slack
    assert "started" in outcome.stderr_tail
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    cmd = _script(tmp_path, "stubborn.py", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)
    """)
    outcome = run_benchmark(CONFIG, timeout_s=1, command=cmd)
    assert outcome.error_kind == "timeout"
    assert outcome.returncode == -signal.SIGKILL


def test_child_runs_in_its_own_session(tmp_path):
    cmd = _script(tmp_path, "session.py", """
        import json, os
        print(json.dumps({"status": "ok", "sid": os.getsid(0), "pgid": os.getpgid(0), "pid": os.getpid()}))
    """)
    outcome = run_benchmark(CONFIG, timeout_s=30, command=cmd)
    # Its own session: a terminal's Ctrl-C (sent to our foreground group) never reaches it.
    assert outcome.result.raw["sid"] == outcome.result.raw["pid"] == outcome.result.raw["pgid"]
    assert outcome.result.raw["sid"] != os.getsid(0)


def test_cancel_kills_the_child_and_marks_the_outcome_interrupted(tmp_path):
    cmd = _script(tmp_path, "slow.py", """
        import time
        time.sleep(300)
    """)
    started: list[int] = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    outcome = run_benchmark(CONFIG, timeout_s=120, command=cmd, cancel=cancel, on_start=started.append)
    assert outcome.interrupted and outcome.error_kind == "interrupted"
    assert outcome.wall_s < 30
    assert len(started) == 1 and not _alive(started[0])


def test_on_tick_is_called_while_the_child_runs(tmp_path):
    cmd = _script(tmp_path, "tick.py", """
        import json, time
        time.sleep(1.6)
        print(json.dumps({"status": "ok"}))
    """)
    ticks: list[float] = []
    outcome = run_benchmark(CONFIG, timeout_s=30, command=cmd, on_tick=lambda: ticks.append(time.monotonic()), tick_s=0.5)
    assert outcome.ok
    assert 2 <= len(ticks) <= 4


def test_a_child_outliving_the_tick_interval_is_collected_without_on_tick(tmp_path):
    # Regression: without on_tick the tick time never advanced, the poll timeout went
    # to 0 and the output was never read until the hard time limit.
    cmd = _script(tmp_path, "long.py", """
        import json, sys, time
        time.sleep(1.5)
        print("x" * 100, file=sys.stderr)
        print(json.dumps({"status": "ok"}))
    """)
    outcome = run_benchmark(CONFIG, timeout_s=30, command=cmd, tick_s=0.3)
    assert outcome.ok
    assert outcome.wall_s < 10


@pytest.mark.parametrize(
    "stdout, expected",
    [
        ('{"status": "ok", "x": 1}\n', {"status": "ok", "x": 1}),
        ('ray: started\n{"status": "error", "error": {"kind": "oom"}}\n\n', {"status": "error", "error": {"kind": "oom"}}),
        ("", None),
        ("[1, 2]\n", None),
        ('{"no_status": true}\n', None),
        ('{"status": "ok"}\ntrailing text\n', None),
    ],
)
def test_parse_result_takes_the_last_line_only(stdout, expected):
    result = parse_result(stdout)
    assert (result.raw if result is not None else None) == expected


def test_result_json_round_trips_the_config(tmp_path):
    # The argument is exactly json.dumps(config): nested values and unicode survive.
    cmd = _script(tmp_path, "echo.py", """
        import json, sys
        print(json.dumps({"status": "ok", "argv": sys.argv[1:]}))
    """)
    config = {"shape": "tiny", "note": "ü ' \" $HOME", "nested": {"a": [1, 2]}}
    outcome = run_benchmark(config, timeout_s=30, command=cmd)
    argv = outcome.result.raw["argv"]
    assert len(argv) == 3 and argv[0] == "--tuner"  # who the tuner is, then the request
    assert argv[1].startswith(f"{os.getpid()}:")
    assert json.loads(argv[2]) == config


def test_a_benchmark_ends_itself_when_its_tuner_is_killed(tmp_path):
    """kill -9 of the tuner: the benchmark, in its own session, notices and kills its
    process group (itself and what it started) instead of running to its time limit."""
    pid_file = tmp_path / "bench.pid"
    grandchild_file = tmp_path / "worker.pid"
    bench = _script(tmp_path, "bench.py", f"""
        import subprocess, sys, time
        from autotune.bench import tuner_watch
        tuner, _ = tuner_watch.from_argv(sys.argv[1:])
        assert tuner_watch.start(tuner) is not None
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(grandchild_file)!r}, "w").write(str(worker.pid))
        time.sleep(120)
    """)
    tuner = _script(tmp_path, "tuner.py", f"""
        from autotune.trials import run_benchmark
        run_benchmark({{"shape": "tiny"}}, timeout_s=120, command={bench!r},
                      on_start=lambda pid: open({str(pid_file)!r}, "w").write(str(pid)))
    """)
    proc = subprocess.Popen(tuner)
    deadline = time.monotonic() + 30
    while not (grandchild_file.exists() and grandchild_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    bench_pid, worker_pid = int(pid_file.read_text()), int(grandchild_file.read_text())
    assert _alive(bench_pid) and _alive(worker_pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while (_alive(bench_pid) or _alive(worker_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(bench_pid) and not _alive(worker_pid)


def test_a_benchmark_started_by_hand_watches_no_tuner():
    from autotune.bench import tuner_watch

    tuner, rest = tuner_watch.from_argv(['{"shape": "tiny"}'])
    assert tuner is None and rest == ['{"shape": "tiny"}']
    assert tuner_watch.start(None) is None


def test_the_tuner_is_named_by_pid_and_start_time():
    from autotune.bench.tuner_watch import TunerIdentity, from_argv

    me = TunerIdentity.of_this_process()
    tuner, rest = from_argv(["{}", *me.argv()])
    assert tuner == me and rest == ["{}"] and tuner.alive()
    assert not TunerIdentity(me.pid, me.started + 1).alive()  # same pid, another process
    from autotune.bench.tuner_watch import _start_time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = TunerIdentity(proc.pid, _start_time(proc.pid))
    assert other.alive()
    proc.kill()
    deadline = time.monotonic() + 5
    while other.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not other.alive()  # a zombie, not yet reaped, is gone too
    proc.wait()
    assert not other.alive()
    with pytest.raises(ValueError, match="PID:START"):
        TunerIdentity.parse("abc")


def test_a_benchmark_whose_tuner_died_before_it_started_ends_at_once(tmp_path):
    """The tuner dies within the benchmark's first instant (here: before the benchmark
    even runs): the real benchmark notices at its start and ends without measuring."""
    tuner_file = tmp_path / "tuner.txt"
    tuner = _script(tmp_path, "tuner.py", f"""
        import os
        from autotune.bench.tuner_watch import TunerIdentity
        open({str(tuner_file)!r}, "w").write(" ".join(TunerIdentity.of_this_process().argv()))
    """)
    subprocess.run(tuner, check=True)  # it has exited: its identity names a dead process
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autotune.bench",
                           json.dumps({"shape": "tiny", "device": "cpu", "context": 4096, "repeats": 100}),
                           *tuner_file.read_text().split()],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "the tuner (pid" in proc.stderr and proc.stdout == ""
    assert time.monotonic() - start < 30
