"""Recovery of trials a killed tuner left RUNNING: detect the stale ones, fail them and
queue their configs again."""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autotune.workers import is_gone

# A RUNNING trial whose heartbeat is older than this is stale on a shared (non-SQLite)
# store; trials send a heartbeat every HEARTBEAT_S while their benchmark runs.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 5 * HEARTBEAT_S


def is_stale(trial: optuna.trial.FrozenTrial, *, single_writer: bool, now: float | None = None,
             lease_s: float = STALE_AFTER_S) -> bool:
    """A RUNNING trial nobody is measuring any more. With the SQLite writer lock held
    every RUNNING trial is one; on a shared store, one whose worker is certainly gone
    (same host, its process no longer exists) or whose heartbeat is older than the lease."""
    if trial.state != TrialState.RUNNING:
        return False
    if single_writer:
        return True
    if is_gone(trial.user_attrs.get("worker")):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if not isinstance(beat, (int, float)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = start
    return (now or time.time()) - beat > lease_s


def recover_stale_trials(storage: RDBStorage, study: optuna.Study, *, single_writer: bool,
                         lease_s: float = STALE_AFTER_S) -> list[int]:
    """Fail the stale RUNNING trials (user attr stale=true) and queue their configs
    again, so each is measured once more and nothing is lost.

    On a shared store the caller holds the study's lock (autotune.store.locks), so two workers
    never recover one trial, nor queue one config, twice. A kill during recovery itself
    leaves either a RUNNING trial (stale again next time) or a stale FAIL trial without
    a successor, which the next recovery queues. Returns the numbers of the trials failed.
    """
    recovered = []
    for trial in study.get_trials(deepcopy=False):
        if not is_stale(trial, single_writer=single_writer, lease_s=lease_s):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "stale", True)
            storage.set_trial_user_attr(trial._trial_id, "error_kind", "stale")
            storage.set_trial_user_attr(
                trial._trial_id, "error_message", "the tuner stopped during this trial; its config was queued again"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker was alive after all and finished it just now
        recovered.append(trial.number)
    requeue_stale_configs(study)
    return recovered


def requeue_stale_configs(study: optuna.Study) -> list[int]:
    """Queue the config of each stale FAIL trial that has no successor yet (a trial with
    user attr requeued_from = its number). Returns the numbers of the new trials' sources."""
    trials = study.get_trials(deepcopy=False)
    successors = {t.user_attrs.get("requeued_from") for t in trials}
    queued = []
    for trial in trials:
        if trial.state != TrialState.FAIL or not trial.user_attrs.get("stale") or trial.number in successors:
            continue
        # A trial killed before its params were stored still has them if it was queued.
        params = dict(trial.params) or _fixed_params(trial)
        if not params:
            continue
        user_attrs: dict[str, Any] = {"requeued_from": trial.number}
        if trial.user_attrs.get("baseline"):
            user_attrs["baseline"] = True
        study.enqueue_trial(params, user_attrs=user_attrs)
        queued.append(trial.number)
    return queued


def _fixed_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return dict(trial.system_attrs.get("fixed_params") or {})
