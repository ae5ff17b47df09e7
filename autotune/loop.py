"""The search loop: ask a config, measure it, tell the result, until the budget ends.

One SearchLoop drives one study (a StudySession) with one evaluator per slot (GPU):
every slot asks, measures and tells on its own, and the loop ends when the trial
budget is spent, the deadline passed, every valid config was measured, a first
Ctrl-C arrived, or the baseline failed. Only this process writes to the store; the
evaluators never touch it.

Per trial: the strategy proposes a config under the study's lock (so no two workers
take one config), the evaluator measures it while the trial sends heartbeats, and the
result is scored and told with its metrics as user attributes; a failed measurement
becomes a FAIL trial with its kind, an interrupted one (second Ctrl-C) is queued again.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import records as R
from autotune.bench.config import BenchRequest
from autotune.evaluators import Evaluator
from autotune.objective import CONSTRAINT, recall_violation, score
from autotune.session import StudySession
from autotune.stop_control import StopControl
from autotune.trials import TrialOutcome, bench_request
from autotune.tune_output import Progress, fmt_config, say, stderr_hint
from autotune.workers import Slot, identity

WAIT_S = 1.0  # how often a slot with nothing to start looks at the study again
TERM_JOIN_S = 30.0  # after a third Ctrl-C, how long the slots get to stop
_WAIT, _DONE = object(), object()  # what SearchLoop.next_trial returns besides a trial


@dataclass(frozen=True)
class Budget:
    n_trials: int | None  # counted over resumes, baseline included
    deadline: float | None  # time.monotonic() at which no trial starts any more


class SearchLoop:
    def __init__(self, session: StudySession, evaluators: Sequence[tuple[Slot, Evaluator]], *, stop: StopControl,
                 budget: Budget, device: str, heartbeat_s: float, process: str,
                 note: Callable[[str], None] = say):
        self.session = session
        self.evaluators = list(evaluators)
        self.stop, self.budget, self.device = stop, budget, device
        self.heartbeat_s, self.process = heartbeat_s, process
        self.note = note
        self.error: str | None = None  # why the search ended early (the baseline failed)
        self._abort = threading.Event()  # a slot hit an error: the others stop too

    @property
    def spec(self):
        return self.session.spec

    # -- measuring -----------------------------------------------------------
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

    def measure(self, evaluator: Evaluator, params: dict[str, Any], repeats: int, *, on_tick=None, on_start=None,
                abandon=None) -> tuple[BenchRequest, TrialOutcome]:
        """abandon: polled with the Ctrl-C check; True stops the measurement (its trial
        was taken over by another worker)."""
        timeout_s = self.trial_timeout(repeats)
        request = self.request(params, repeats, timeout_s)

        def cancel() -> bool:
            for notice in self.stop.notices():
                say(notice)
            return self.stop.kill_requested() or bool(abandon and abandon())

        outcome = evaluator.measure(request, timeout_s=timeout_s, on_tick=on_tick, tick_s=self.heartbeat_s,
                                    cancel=cancel, on_start=on_start)
        for notice in self.stop.notices():
            say(notice)
        return request, outcome

    # -- one trial -----------------------------------------------------------
    def run_trial(self, trial: optuna.Trial, params: dict[str, Any], slot: Slot,
                  evaluator: Evaluator) -> FrozenTrial | None:
        """Measure and tell one trial. None when another worker took the trial over
        meanwhile (its heartbeat had stopped for longer than the lease)."""
        taken_over = threading.Event()
        try:
            return self._measure_trial(trial, params, slot, evaluator, taken_over)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not self.session.storage.get_trial(trial._trial_id).state.is_finished():
                raise
            taken_over.set()
        finally:
            if taken_over.is_set():
                say(f"L{self.session.context}: trial {trial.number} was failed by another worker (no heartbeat for "
                    f"{self.session.lease_s:.0f} s) and its config queued again; this measurement is dropped")
        return None

    def _label(self, trial: optuna.Trial, slot: Slot) -> bool:
        """Write who measures the trial; True for the baseline."""
        study, storage = self.session.study, self.session.storage
        is_baseline = bool(trial.user_attrs.get(R.BASELINE))
        requeued_from = trial.user_attrs.get(R.REQUEUED_FROM)
        # The sampler wrote the strategy through the storage; the Trial's cache lacks it.
        attrs = storage.get_trial_user_attrs(trial._trial_id)
        if is_baseline:
            trial.set_user_attr(R.STRATEGY, "baseline")
        elif R.STRATEGY not in attrs:
            original = study.get_trials(deepcopy=False)[requeued_from] if isinstance(requeued_from, int) else None
            trial.set_user_attr(R.STRATEGY, (original.user_attrs.get(R.STRATEGY) if original else None) or "queued")
        trial.set_user_attr(R.WORKER, identity())
        trial.set_user_attr(R.PROCESS, self.process)
        if slot.gpu is not None:
            trial.set_user_attr(R.GPU, slot.gpu)
        trial.set_user_attr(R.HEARTBEAT, time.time())
        return is_baseline

    def _measure_trial(self, trial: optuna.Trial, params: dict[str, Any], slot: Slot, evaluator: Evaluator,
                       taken_over: threading.Event) -> FrozenTrial | None:
        session, study = self.session, self.session.study
        is_baseline = self._label(trial, slot)

        def heartbeat() -> None:
            try:
                trial.set_user_attr(R.HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                taken_over.set()  # failed as stale by another worker: stop measuring it

        def started(pid: int) -> None:  # lets an operator find the benchmark of a stuck trial
            trial.set_user_attr(R.BENCH_PID, pid)

        request, outcome = self.measure(evaluator, params, self.spec.workload.repeats, on_tick=heartbeat,
                                        on_start=started, abandon=taken_over.is_set)
        if taken_over.is_set():
            return None
        result = outcome.result
        trial.set_user_attr(R.CONFIG, result.config or request.to_dict())
        trial.set_user_attr(R.STDERR_TAIL, outcome.stderr_tail)
        trial.set_user_attr(R.WALL_S, round(outcome.wall_s, 3))
        if result.env is not None:
            trial.set_user_attr(R.ENV, result.env)
        if result.timings:
            trial.set_user_attr(R.TIMINGS, result.timings)

        value = None
        kind, message = outcome.error_kind, outcome.error_message
        if outcome.ok:
            try:
                if is_baseline:
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
            attrs = {R.REQUEUED_FROM: trial.number, **({R.BASELINE: True} if is_baseline else {})}
            study.enqueue_trial(params, user_attrs=attrs)
        return study.tell(trial, state=TrialState.FAIL)

    # -- the loop ------------------------------------------------------------
    def run(self, progress: Progress) -> None:
        """Search until the budget ends. Each slot drives its own evaluator; with one
        slot in this thread, with several each in a thread of its own."""
        if len(self.evaluators) == 1:
            self._drive(progress, *self.evaluators[0])
            return
        with ThreadPoolExecutor(len(self.evaluators), thread_name_prefix="tune-slot") as pool:
            futures = [pool.submit(self._drive_or_abort, progress, slot, evaluator)
                       for slot, evaluator in self.evaluators]
            try:
                while True:
                    done, pending = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                    for notice in self.stop.notices():
                        say(notice)
                    if not pending or any(f.exception() for f in done):
                        break
            except KeyboardInterrupt:  # third Ctrl-C: the benchmarks are being killed
                self._abort.set()
                wait(futures, timeout=TERM_JOIN_S)
                raise
            wait(futures)
            for future in futures:
                future.result()  # the first slot error, raised here

    def _drive_or_abort(self, progress: Progress, slot: Slot, evaluator: Evaluator) -> None:
        try:
            self._drive(progress, slot, evaluator)
        except BaseException:
            self._abort.set()
            raise

    def _drive(self, progress: Progress, slot: Slot, evaluator: Evaluator) -> None:
        session = self.session
        while not self._abort.is_set():
            step = self.next_trial()
            if step is _DONE:
                return
            if step is _WAIT:
                time.sleep(WAIT_S)
                continue
            trial, params = step
            frozen = self.run_trial(trial, params, slot, evaluator)
            if frozen is None:
                continue  # taken over by another worker
            if frozen.user_attrs.get(R.BASELINE) and session.baseline is None:
                progress.trial(frozen, params, None, slot)
                record = R.TrialRecord.of(frozen)
                self.error = (f"the baseline config ({fmt_config(params)}) failed: {record.failure}"
                              + stderr_hint(frozen))
                self._abort.set()
                return
            progress.trial(frozen, params, session.best(), slot)

    def next_trial(self):
        """The next trial to measure, as (trial, params); or _WAIT (other workers' trials
        are in flight and may yet be cut off) or _DONE. Holds the study's lock, so the
        sampler sees every trial other workers started and no config is taken twice."""
        session = self.session
        with session.locks.hold(session.lock_name):
            if self.stop.stop_requested or self._abort.is_set():
                return _DONE
            if session.shared:
                session.recover_others()
            trials = session.trials()
            counted = session.counted(trials)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            n_trials = self.budget.n_trials
            if n_trials is not None and len(counted) >= n_trials:
                return _DONE
            if self.budget.deadline is not None and time.monotonic() >= self.budget.deadline:
                self.note("wall-time budget reached")
                return _DONE
            if n_trials is not None and len(counted) + len(running) >= n_trials:
                return _WAIT
            if session.baseline is None:
                session.load_baseline()
            if session.baseline is None:
                if not any(t.user_attrs.get(R.BASELINE) for t in waiting):
                    if any(t.user_attrs.get(R.BASELINE) for t in running):
                        return _WAIT  # another worker (or slot) is measuring it
                    failed = session.failed_baseline()
                    if failed is not None:
                        self.error = (f"the baseline config failed on another worker (trial {failed.number}): "
                                      f"{failed.failure}")
                        self._abort.set()
                        return _DONE
                    session.study.enqueue_trial(session.baseline_config, user_attrs={R.BASELINE: True})
            elif not waiting and session.sampler.remaining(session.study) == 0:
                if running:
                    return _WAIT
                self.note(f"all {len(session.space)} valid configs measured")
                return _DONE
            trial = session.study.ask()
            params = {k: trial.suggest_categorical(k, session.space.values[k]) for k in session.space.knob_names}
            return trial, params
