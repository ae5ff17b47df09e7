"""The dashboard shows what `autotune export` writes: the verdict as the study's note
and user attr, and the objective named "score"."""

from __future__ import annotations

import signal
import warnings

import optuna

from autotune.verdict import publish
from outputs_fixtures import standard_store
from test_dashboard import get_json, start_dashboard, stop_dashboard


def test_the_dashboard_serves_the_verdict_and_names_the_objective(tmp_path):
    url = standard_store(tmp_path)
    study = optuna.load_study(study_name="tiny/cpu/queued/L64", storage=url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["score"])  # as the tuner does when it creates a study
    words = publish(study, study.user_attrs["confirmation"])
    assert words.startswith("Trial 14 becomes the default")
    proc, base = start_dashboard(url)
    try:
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == "tiny/cpu/queued/L64")
        detail = get_json(f"{base}/api/studies/{study_id}?after=0")
    finally:
        stop_dashboard(proc, signal.SIGINT)
    assert detail["objective_names"] == ["score"]  # the axis reads "score", not "Objective 0"
    assert words in detail["note"]["body"] and "What `autotune export` writes" in detail["note"]["body"]
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert attrs["verdict"] == words
