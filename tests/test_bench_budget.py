"""The 125m shape at L = 2048 is measured on a CPU within a minute."""

import json
import os
import resource
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_125m_at_2048_on_cpu_within_a_minute():
    """Default repeats and new_tokens, one torch thread. The child's CPU time is the
    figure checked: unlike wall time it does not grow when other jobs share the machine,
    and one thread's CPU seconds bound the wall time of a run that has a core to itself."""
    config = {"shape": "125m", "device": "cpu", "context": 2048}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.bench", json.dumps(config)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "ok"
    assert result["metrics"]["prefill_tok_s"]["median"] > 0 and result["metrics"]["decode_tok_s"]["median"] > 0
    assert len(result["metrics"]["prefill_tok_s"]["samples"]) == 3
    assert cpu_s < 60, f"125m at L=2048 took {cpu_s:.1f} CPU seconds"
