"""One context length of a tuning run: its study session, search loop and confirmation.

The StudySession (autotune.session) opens or resumes the study and holds its baseline;
the SearchLoop (autotune.loop) asks, measures and tells until the budget ends, one
evaluator per slot (a warm worker or fresh processes, autotune.evaluators); then the top
configs are confirmed (autotune.confirm) in fresh processes, since confirmation tests
differences between configs against the spread between processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from autotune import confirm as confirmation
from autotune import records as R
from autotune.evaluators import FreshProcess, make_evaluator
from autotune.store.locks import NamedLocks
from autotune.loop import WAIT_S, SearchLoop
from autotune.objective import score
from autotune.session import StudySession
from autotune.spec import StudySpec
from autotune.stop_control import StopControl
from autotune.study_search import Budget, StudySearch
from autotune.store.layout import study_tail
from autotune.store.recovery import STALE_AFTER_S
from autotune.store.storage import StorageURL
from autotune.trials import TrialOutcome
from autotune.tune_output import ContextResult, Progress, fmt_config, fmt_time, say
from autotune.verdict import plural
from autotune.workers import Slot


@dataclass(frozen=True)
class TuneOptions:
    storage: str
    n_trials: int | None
    timeout_s: float | None
    seed: int | None = None
    new_study: bool = False
    bench_command: tuple[str, ...] | None = None  # a fake benchmark, for tests
    gpus: tuple[int, ...] = ()  # --gpus: one benchmark child per GPU at a time
    lease_s: float = STALE_AFTER_S  # shared stores: a heartbeat older than this is a dead worker
    confirm: bool = True  # False: search only (--skip-confirmation)
    process: str | None = None  # "warm" | "fresh" (--process); None: the spec's [trials] process
    warm_start: str | None = None  # --warm-start: an export file or store URL whose ranking seeds each study

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 5


class ContextTuner:
    """The search and confirmation of one context length's study."""

    def __init__(self, spec: StudySpec, options: TuneOptions, context: int, *, storage, location: StorageURL,
                 device_kind: str, device: str, fingerprint: dict[str, str], stop: StopControl,
                 slots: tuple[Slot, ...] = (Slot(),), locks: NamedLocks | None = None):
        self.spec, self.options, self.context = spec, options, context
        self.device, self.stop = device, stop
        self.slots = tuple(slots)
        self.process = options.process or spec.trials.process
        self.session = StudySession(spec, context, storage=storage, location=location, device_kind=device_kind,
                                    fingerprint=fingerprint, locks=locks or NamedLocks(None),
                                    lease_s=options.lease_s, new_study=options.new_study, seed=options.seed,
                                    warm_start=options.warm_start)
        self.result = ContextResult(context)

    def _note(self, text: str) -> None:
        if text not in self.result.notes:
            self.result.notes.append(text)

    def _search(self, deadline: float | None, progress: Progress | None = None) -> StudySearch:
        return StudySearch(self.session, budget=Budget(self.options.n_trials, deadline), device=self.device,
                           process=self.process, progress=progress, note=self._note)

    def run(self, deadline: float | None) -> ContextResult:
        session = self.session
        study = session.open()
        self.result.study = study.study_name
        evaluators = [(slot, make_evaluator(self.process, command=self.options.bench_command, env=slot.env()))
                      for slot in self.slots]
        label = study_tail(self.context, self.spec.workload.batch)
        progress = Progress(label, self.options.n_trials, len(session.counted()), deadline)
        search = self._search(deadline, progress)
        started = time.monotonic()
        try:
            SearchLoop(search, evaluators, stop=self.stop, tick_s=self.options.heartbeat_s).run()
        finally:
            progress.close()
            for _, evaluator in evaluators:
                evaluator.close()  # a warm worker holds the device: free it for confirmation
        self.result.error = search.error
        self._note_rate(progress.measured, time.monotonic() - started)
        if self.result.error or self.stop.kill_requested():
            return self._finish()
        self._await_other_workers()
        if self.options.confirm:
            with session.locks.hold(f"confirm:{session.name}"):
                # One worker confirms at a time; the next finds the verdict current and keeps it.
                self._confirm()
        else:
            self._note("confirmation skipped (--skip-confirmation); a run without it confirms")
        return self._finish()

    def _note_rate(self, measured: int, seconds: float) -> None:
        """This run's throughput, and with --gpus the study's trials per GPU."""
        if measured and seconds > 0:
            self._note(f"this run measured {plural(measured, 'trial')} in {fmt_time(seconds)} "
                       f"({measured / seconds * 3600:.0f}/hour, {self.process} benchmark processes)")
        if len(self.slots) > 1:
            per_gpu: dict[int, int] = {}
            for record in map(R.TrialRecord.of, self.session.counted()):
                if record.gpu is not None:
                    per_gpu[record.gpu] = per_gpu.get(record.gpu, 0) + 1
            self._note("trials per GPU " + ", ".join(f"{g}: {n}" for g, n in sorted(per_gpu.items())))

    def _await_other_workers(self) -> None:
        """On a shared store, wait until other workers' trials of this study finish (or
        are found cut off), so that every worker confirms and reports the same trials."""
        session = self.session
        if not session.shared:
            return
        said = False
        while not self.stop.stop_requested:
            with session.locks.hold(session.lock_name):
                session.recover_others()
                running = [t for t in session.trials() if t.state == TrialState.RUNNING]
            if not running:
                return
            if not said:
                say(f"L{self.context}: waiting for {plural(len(running), 'trial')} of other workers before confirming")
                said = True
            time.sleep(WAIT_S)

    # -- confirmation and summary ---------------------------------------------
    def _confirm(self) -> None:
        session, settings = self.session, self.spec.confirmation
        baseline_trial = session.baseline_trial()
        if baseline_trial is None or session.baseline is None or settings.top_k == 0:
            return
        if confirmation.is_current(session.study, settings):
            self.result.verdict = session.study.user_attrs[R.STUDY_CONFIRMATION]
            return
        presses_at_start = self.stop.presses
        search, slot = self._search(None), self.slots[0]
        # In fresh processes: confirmation weighs configs against the spread between processes.
        evaluator = FreshProcess(self.options.bench_command, slot.env())
        loop = SearchLoop(search, [(slot, evaluator)], stop=self.stop, tick_s=self.options.heartbeat_s)

        def measure(params: dict[str, Any], repeats: int) -> TrialOutcome | None:
            if self.stop.presses > presses_at_start:
                return None  # Ctrl-C during confirmation: no further measurement
            outcome = loop.measure(evaluator, search.step(params, repeats))
            if outcome.interrupted:
                return None
            say(f"L{self.context} confirm {fmt_config(params)} ({repeats} repeats): "
                + (f"ok, score {self._score_of(outcome)}" if outcome.ok
                   else f"FAIL {outcome.error_kind}: {outcome.error_message}")
                + f" ({outcome.wall_s:.1f} s)")
            return outcome

        verdict = confirmation.confirm(
            session.study, baseline_trial=baseline_trial, baseline=session.baseline, weights=self.spec.objective,
            settings=settings, measure=measure, log=lambda msg: say(f"L{self.context}: {msg}"),
        )
        if verdict is None:
            self.result.notes.append("confirmation cancelled; it runs again next time")
        self.result.verdict = verdict.as_attr() if verdict is not None else None

    def _score_of(self, outcome: TrialOutcome) -> str:
        """One process's score, as text: confirmation shows how far processes differ."""
        try:
            return f"{score(outcome.result.metrics, self.session.baseline, self.spec.objective):.3f}"
        except ValueError:
            return "n/a"

    def _finish(self) -> ContextResult:
        session = self.session
        trials = session.trials()
        counted = session.counted(trials)
        self.result.finished = len(counted)
        self.result.failed = sum(1 for t in counted if t.state == TrialState.FAIL)
        self.result.best = session.best()
        base = session.baseline_trial(trials)
        self.result.baseline_value = base.value if base else None
        return self.result
