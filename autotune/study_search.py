"""The tuner's search: one study's trials, asked of its strategy and told to Optuna.

`next` proposes a trial under the study's lock (so no two workers take one config; on a
shared store it first recovers the trials of workers that stopped), or says WAIT or
DONE: the trial budget is spent, the deadline passed, every valid config was measured,
or the baseline failed on another worker. It labels the trial (strategy, worker,
process, GPU, heartbeat) and asks for a measurement whose time limit follows the
baseline's wall time. `tell` scores the outcome and tells it with metrics, counters,
timings and stderr tail as user attributes: a failure is a FAIL trial with its kind,
an interrupted measurement (second Ctrl-C) is marked stale and its config queued
again, and a failed baseline ends the search.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import records as R
from autotune.bench.config import BenchRequest
from autotune.loop import DONE, WAIT, Step
from autotune.objective import CONSTRAINT, recall_violation, score
from autotune.session import StudySession
from autotune.trials import TrialOutcome, bench_request
from autotune.tune_output import Progress, fmt_config, say, stderr_hint
from autotune.workers import Slot, identity


@dataclass(frozen=True)
class Budget:
    n_trials: int | None  # counted over resumes, baseline included
    deadline: float | None  # time.monotonic() at which no trial starts any more


@dataclass
class _Trial:
    trial: optuna.Trial
    params: dict[str, Any]
    baseline: bool
    taken_over: threading.Event


class StudySearch:
    def __init__(self, session: StudySession, *, budget: Budget, device: str, process: str,
                 progress: Progress | None = None, note: Callable[[str], None] = say):
        self.session = session
        self.budget, self.device, self.process = budget, device, process
        self.progress = progress
        self.note = note
        self.error: str | None = None  # why the search ended early (the baseline failed)

    @property
    def spec(self):
        return self.session.spec

    # -- requests --------------------------------------------------------------
    def trial_timeout(self, repeats: int) -> float:
        limits = self.spec.trials
        scale = max(1.0, repeats / self.spec.workload.repeats)
        wall = self.session.baseline_wall_s
        if wall is None:
            return limits.timeout_cap_s * scale
        return min(limits.timeout_cap_s, max(limits.timeout_min_s, limits.timeout_factor * wall)) * scale

    def request(self, params: dict[str, Any], repeats: int, timeout_s: float) -> BenchRequest:
        return bench_request(self.spec, device=self.device, context=self.session.context, params=params,
                             repeats=repeats, timeout_s=timeout_s)

    def step(self, params: dict[str, Any], repeats: int, item: Any = None, **hooks) -> Step:
        """The measurement of `params` with `repeats` repeats (confirmation uses more)."""
        timeout_s = self.trial_timeout(repeats)
        return Step(self.request(params, repeats, timeout_s), timeout_s, item, **hooks)

    # -- next ------------------------------------------------------------------
    def next(self, slot: Slot):
        asked = self._ask()
        if asked is WAIT or asked is DONE:
            return asked
        trial, params = asked
        current = _Trial(trial, params, bool(trial.user_attrs.get(R.BASELINE)), threading.Event())
        self._label(current, slot)

        def heartbeat() -> None:
            try:
                trial.set_user_attr(R.HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                current.taken_over.set()  # failed as stale by another worker: stop measuring it

        def started(pid: int) -> None:  # lets an operator find the benchmark of a stuck trial
            trial.set_user_attr(R.BENCH_PID, pid)

        return self.step(params, self.spec.workload.repeats, current, on_tick=heartbeat, on_start=started,
                         abandon=current.taken_over.is_set)

    def _ask(self):
        """(trial, params), WAIT or DONE, under the study's lock."""
        session = self.session
        with session.locks.hold(session.lock_name):
            if session.shared:
                session.recover_others()
            trials = session.trials()
            counted = session.counted(trials)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            n_trials = self.budget.n_trials
            if n_trials is not None and len(counted) >= n_trials:
                return DONE
            if self.budget.deadline is not None and time.monotonic() >= self.budget.deadline:
                self.note("wall-time budget reached")
                return DONE
            if n_trials is not None and len(counted) + len(running) >= n_trials:
                return WAIT
            if session.baseline is None:
                session.load_baseline()
            if session.baseline is None:
                if not any(t.user_attrs.get(R.BASELINE) for t in waiting):
                    if any(t.user_attrs.get(R.BASELINE) for t in running):
                        return WAIT  # another worker (or slot) is measuring it
                    failed = session.failed_baseline()
                    if failed is not None:
                        self.error = (f"the baseline config failed on another worker (trial {failed.number}): "
                                      f"{failed.failure}")
                        return DONE
                    session.study.enqueue_trial(session.baseline_config, user_attrs={R.BASELINE: True})
            elif not waiting and session.sampler.remaining(session.study) == 0:
                if running:
                    return WAIT
                self.note(f"all {len(session.space)} valid configs measured")
                return DONE
            trial = session.study.ask()
            params = {k: trial.suggest_categorical(k, session.space.values[k]) for k in session.space.knob_names}
            return trial, params

    def _label(self, current: _Trial, slot: Slot) -> None:
        """Write who measures the trial and how."""
        study, storage, trial = self.session.study, self.session.storage, current.trial
        requeued_from = trial.user_attrs.get(R.REQUEUED_FROM)
        # The sampler wrote the strategy through the storage; the Trial's cache lacks it.
        attrs = storage.get_trial_user_attrs(trial._trial_id)
        if current.baseline:
            trial.set_user_attr(R.STRATEGY, "baseline")
        elif R.STRATEGY not in attrs:
            original = study.get_trials(deepcopy=False)[requeued_from] if isinstance(requeued_from, int) else None
            trial.set_user_attr(R.STRATEGY, (original.user_attrs.get(R.STRATEGY) if original else None) or "queued")
        trial.set_user_attr(R.WORKER, identity())
        trial.set_user_attr(R.PROCESS, self.process)
        if slot.gpu is not None:
            trial.set_user_attr(R.GPU, slot.gpu)
        trial.set_user_attr(R.HEARTBEAT, time.time())

    # -- tell ------------------------------------------------------------------
    def tell(self, step: Step, outcome: TrialOutcome, slot: Slot) -> bool:
        current: _Trial = step.item
        frozen = None
        try:
            if not current.taken_over.is_set():
                frozen = self._tell(current, step.request, outcome)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not self.session.storage.get_trial(current.trial._trial_id).state.is_finished():
                raise
            current.taken_over.set()
        if current.taken_over.is_set():
            say(f"L{self.session.context}: trial {current.trial.number} was failed by another worker (no heartbeat "
                f"for {self.session.lease_s:.0f} s) and its config queued again; this measurement is dropped")
            return True
        if current.baseline and self.session.baseline is None:
            self._show(frozen, current.params, None, slot)
            self.error = (f"the baseline config ({fmt_config(current.params)}) failed: "
                          f"{R.TrialRecord.of(frozen).failure}" + stderr_hint(frozen))
            return False
        self._show(frozen, current.params, self.session.best(), slot)
        return True

    def _show(self, frozen: FrozenTrial, params, best, slot: Slot) -> None:
        if self.progress is not None:
            self.progress.trial(frozen, params, best, slot)

    def _tell(self, current: _Trial, request: BenchRequest, outcome: TrialOutcome) -> FrozenTrial:
        session, study, trial = self.session, self.session.study, current.trial
        result = outcome.result
        trial.set_user_attr(R.CONFIG, result.config or request.to_dict())
        trial.set_user_attr(R.STDERR_TAIL, outcome.stderr_tail)
        trial.set_user_attr(R.WALL_S, round(outcome.wall_s, 3))
        if result.env is not None:
            trial.set_user_attr(R.ENV, result.env)
        if result.timings:
            trial.set_user_attr(R.TIMINGS, result.timings)
        if result.kernels:
            trial.set_user_attr(R.KERNELS, result.kernels)

        value = None
        kind, message = outcome.error_kind, outcome.error_message
        if outcome.fell_back:  # measured on other kernels than the config names: failed, metrics kept
            trial.set_user_attr(R.METRICS, result.metrics)
        elif outcome.ok:
            try:
                if current.baseline:
                    session.adopt_baseline(result.metrics, outcome.wall_s, trial.number)
                value = score(result.metrics, session.baseline, self.spec.objective)
            except ValueError as exc:
                kind, message = "invalid_result", str(exc)
            trial.set_user_attr(R.METRICS, result.metrics)
            trial.set_user_attr(R.COUNTERS, result.counters)
        if value is not None and math.isfinite(value):
            trial.set_constraint(CONSTRAINT, recall_violation(result.metrics, self.spec.objective))
            return study.tell(trial, value)
        trial.set_user_attr(R.ERROR_KIND, kind or "crash")
        trial.set_user_attr(R.ERROR_MESSAGE, message or "")
        if outcome.interrupted:
            # Not the config's fault: measure it again next run, as after a kill -9.
            trial.set_user_attr(R.STALE, True)
            attrs = {R.REQUEUED_FROM: trial.number, **({R.BASELINE: True} if current.baseline else {})}
            study.enqueue_trial(current.params, user_attrs=attrs)
        return study.tell(trial, state=TrialState.FAIL)
