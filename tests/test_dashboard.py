"""`autotune dashboard` serves optuna-dashboard on the store; its API lists the studies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import optuna

from autotune.cli import main
from outputs_fixtures import standard_store

optuna.logging.set_verbosity(optuna.logging.WARNING)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def _terminal_signals():
    # A shell runs background jobs with SIGINT ignored, and a child inherits that; give the
    # server the default handling a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_dashboard(url: str) -> tuple[subprocess.Popen, str]:
    """The command on a free loopback port (port 0: the OS picks; the command prints it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "dashboard", "--storage", url, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=_terminal_signals,
    )
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "http://" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "dashboard exited before listening"
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, f"no address printed: {line!r}"
    return proc, f"http://127.0.0.1:{match.group(1)}"


def stop_dashboard(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"dashboard still running 60 s after signal {signum}") from None
    return code, proc.stdout.read()


def test_dashboard_lists_the_studies_and_their_trials(tmp_path):
    url = standard_store(tmp_path)
    proc, base = start_dashboard(url)
    try:
        studies = get_json(f"{base}/api/studies")["study_summaries"]
        by_name = {s["study_name"]: s for s in studies}
        assert set(by_name) == {"tiny/cpu/queued/L16", "tiny/cpu/queued/L64"}
        detail = get_json(f"{base}/api/studies/{by_name['tiny/cpu/queued/L64']['study_id']}?after=0")
        assert len(detail["trials"]) == 15
        first = detail["trials"][0]
        attrs = {a["key"]: a["value"] for a in first["user_attrs"]}
        assert attrs["strategy"] == "baseline"
        with urllib.request.urlopen(f"{base}/dashboard", timeout=10) as page:
            assert b"<html" in page.read().lower()
    finally:
        code, output = stop_dashboard(proc, signal.SIGINT)  # Ctrl-C: the command stops cleanly
    assert code == 0 and "dashboard stopped" in output


def test_dashboard_stops_cleanly_on_sigterm(tmp_path):
    proc, base = start_dashboard(standard_store(tmp_path))
    get_json(f"{base}/api/studies")
    code, output = stop_dashboard(proc, signal.SIGTERM)
    assert code == 0 and "dashboard stopped" in output


def test_dashboard_on_a_missing_store_is_an_error(tmp_path, capsys):
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--port", "0"]) == 2
    assert "no store at" in capsys.readouterr().err
