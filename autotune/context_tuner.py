"""One context length of a tuning run: its study, baseline, search loop and confirmation.

The first trial is the baseline (the runner's default config); the spec's strategy then
proposes configs until the budget ends; each is measured in a benchmark child
(autotune.trials), scored (autotune.objective) and told to Optuna with its metrics as
user attrs; then the top configs are confirmed (autotune.confirm). On a shared store
proposals, recovery and confirmation take named locks (autotune.locks).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import confirm as confirmation
from autotune.cli import UserError
from autotune.defaults import KNOBS
from autotune.objective import CONSTRAINT, Baseline, recall_violation, score
from autotune.spec import StudySpec
from autotune.locks import NamedLocks
from autotune.store import (
    STALE_AFTER_S,
    OpenedStudy,
    StorageURL,
    open_study,
    recover_stale_trials,
    study_name,
)
from autotune.trials import TrialOutcome, bench_request, run_benchmark
from autotune.stop_control import StopControl
from autotune.tune_output import ContextResult, Progress, fmt_config, fmt_time, say, stderr_hint
from autotune.workers import Slot, identity

# How often a worker with nothing to start looks at the study again (other workers'
# trials finishing, or being cut off).
WAIT_S = 1.0
TERM_JOIN_S = 30.0  # after a third Ctrl-C, how long the search threads get to stop
_WAIT, _DONE = object(), object()  # what ContextTuner._next_trial returns besides a trial


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

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 5


class ContextTuner:
    """The search and confirmation of one context length's study."""

    def __init__(self, spec: StudySpec, options: TuneOptions, context: int, *, storage, location: StorageURL,
                 device_kind: str, device: str, fingerprint: dict[str, str], stop: StopControl,
                 slots: tuple[Slot, ...] = (Slot(),), locks: NamedLocks | None = None):
        self.spec, self.options, self.context = spec, options, context
        self.storage, self.location = storage, location
        self.device_kind, self.device, self.fingerprint = device_kind, device, fingerprint
        self.stop = stop
        self.slots = tuple(slots)  # one search thread per slot (GPU)
        self.locks = locks or NamedLocks(None)
        self.result = ContextResult(context)
        self.baseline: Baseline | None = None
        self.baseline_wall_s: float | None = None
        self._abort = threading.Event()  # a search thread hit an error: the others stop too
        self._notes_lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Other tuners may work on this store at the same time (a server database)."""
        return self.location is not None and not self.location.is_sqlite

    def _note(self, text: str) -> None:
        with self._notes_lock:
            if text not in self.result.notes:
                self.result.notes.append(text)

    # -- setup ---------------------------------------------------------------
    def _runner_default(self, num_heads: int) -> tuple[dict[str, Any], str]:
        """The config the runner uses today for this prompt length, and where from."""
        from autotune.defaults import builtin_default, pick_choice

        backend = self.spec.model.backends[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no defaults file yet is the normal first run
            choice = pick_choice(self.spec.model.shape, self.device_kind, backend, self.context,
                                 dtype=self.spec.model.dtype, num_heads=num_heads)
        knobs = dict(choice.config)
        source = (f"the defaults file's entry for context {choice.context} (study {choice.study}, trial {choice.trial})"
                  if choice.source == "file" else "built-in default")
        if knobs["chunk_size"] > self.context or knobs["workers"] > num_heads // knobs["heads_per_band"]:
            knobs, source = builtin_default(num_heads, self.context), "built-in default"
        if len(self.spec.model.backends) > 1:
            knobs = {"backend": backend, **knobs}
        return knobs, source

    def _space_values(self, baseline_cfg: dict[str, Any]) -> dict[str, list[Any]]:
        """The spec's value lists plus the baseline's values, so the baseline is a
        config of the space (its trial has the same categorical params as the rest)."""
        values: dict[str, list[Any]] = {}
        if len(self.spec.model.backends) > 1:
            values["backend"] = list(self.spec.model.backends)
        for knob in KNOBS:
            values[knob] = sorted(set(self.spec.space[knob]) | {baseline_cfg[knob]})
        return values

    def _build_space(self, values: dict[str, list[Any]], num_heads: int):
        from autotune.space import SearchSpace, SpaceError

        try:
            return SearchSpace(values, num_heads, self.context)
        except SpaceError as exc:
            raise UserError(f"{self.spec.path}: [space] gives no valid config at context {self.context}: {exc}") from None

    def _open(self) -> tuple[optuna.Study, Any]:
        from kernels import get_config
        from autotune.strategies import make_sampler

        num_heads = get_config(self.spec.model.shape).num_heads
        baseline_cfg, source = self._runner_default(num_heads)
        values = self._space_values(baseline_cfg)
        self._build_space(values, num_heads)  # refuse a bad spec before creating anything
        spec = self.spec
        base = study_name(spec.model.shape, self.device_kind, spec.model.backends, self.context)
        with self.locks.hold(f"create:{base}"):
            opened: OpenedStudy = self._open_study(base, baseline_cfg, source, values)
        name = opened.study.study_name
        self._lock = f"study:{name}"
        self.result.study = name
        stored = opened.study.user_attrs
        space = self._build_space(stored["space"], num_heads)
        self.baseline_config = stored["baseline_config"]
        if opened.created:
            say(f"L{self.context}: new study {name}; baseline {fmt_config(baseline_cfg)} ({source})")
        with self.locks.hold(self._lock):
            recovered = recover_stale_trials(self.storage, opened.study, single_writer=not self.shared,
                                             lease_s=self.options.lease_s)
            self._first_new_trial = len(opened.study.get_trials(deepcopy=False))
        if recovered:
            say(f"L{self.context}: resuming {name}: trial(s) {', '.join(map(str, recovered))} were cut off; "
                 "marked stale and queued again")
        elif not opened.created:
            say(f"L{self.context}: resuming {name}")
        self.sampler = make_sampler(spec.search.strategy, space, seed=self.options.seed)
        study = optuna.load_study(study_name=name, storage=self.storage, sampler=self.sampler)
        self._load_baseline(study)
        return study, space

    def _open_study(self, base: str, baseline_cfg: dict[str, Any], source: str,
                    values: dict[str, list[Any]]) -> OpenedStudy:
        spec = self.spec
        return open_study(
            self.storage, base,
            fingerprint=self.fingerprint,
            identity=spec.identity(),
            attrs={
                "spec": spec.to_dict(),
                "shape": spec.model.shape,
                "dtype": spec.model.dtype,
                "device": self.device_kind,
                "backends": list(spec.model.backends),
                "context": self.context,
                "space": values,
                "baseline_config": baseline_cfg,
                "baseline_source": source,
            },
            sampler=optuna.samplers.RandomSampler(),
            new_study=self.options.new_study,
        )

    def _load_baseline(self, study: optuna.Study) -> None:
        """The baseline's speeds, once some worker (maybe another) measured them."""
        stored = study.user_attrs
        if "baseline" in stored:
            self.baseline = Baseline(**stored["baseline"])
            self.baseline_wall_s = stored.get("baseline_wall_s")

    # -- budget --------------------------------------------------------------
    @staticmethod
    def _counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Trials that count against the budget: finished, not stale."""
        return [t for t in trials if t.state.is_finished() and not t.user_attrs.get("stale")]

    def _baseline_trial(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        done = [t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE]
        return done[0] if done else None

    def _ensure_baseline_queued(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        if self._baseline_trial(trials) is not None:
            return
        pending = [t for t in trials if t.user_attrs.get("baseline") and t.state in (TrialState.WAITING, TrialState.RUNNING)]
        if not pending:
            study.enqueue_trial(self.baseline_config, user_attrs={"baseline": True})

    def _trial_timeout(self, repeats: int) -> float:
        limits = self.spec.trials
        scale = max(1.0, repeats / self.spec.workload.repeats)
        if self.baseline_wall_s is None:
            return limits.timeout_cap_s * scale
        return min(limits.timeout_cap_s, max(limits.timeout_min_s, limits.timeout_factor * self.baseline_wall_s)) * scale

    # -- measuring -----------------------------------------------------------
    def bench_config(self, params: dict[str, Any], repeats: int, timeout_s: float) -> dict[str, Any]:
        return bench_request(self.spec, device=self.device, context=self.context, params=params,
                             repeats=repeats, timeout_s=timeout_s)

    def _measure(self, params: dict[str, Any], repeats: int, on_tick=None, on_start=None, *,
                 slot: Slot | None = None, abandon=None) -> tuple[dict[str, Any], TrialOutcome]:
        """abandon: polled with the Ctrl-C check; True kills the benchmark (its trial was
        taken over by another worker)."""
        timeout_s = self._trial_timeout(repeats)
        config = self.bench_config(params, repeats, timeout_s)
        slot = slot or self.slots[0]

        def cancel() -> bool:
            for notice in self.stop.notices():
                say(notice)
            return self.stop.kill_requested() or bool(abandon and abandon())

        outcome = run_benchmark(config, timeout_s=timeout_s, command=self.options.bench_command, env=slot.env(),
                                on_tick=on_tick, tick_s=self.options.heartbeat_s, cancel=cancel, on_start=on_start)
        for notice in self.stop.notices():
            say(notice)
        return config, outcome

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any],
                   slot: Slot | None = None) -> FrozenTrial | None:
        """Measure and tell one trial. None when another worker took the trial over
        meanwhile (its heartbeat had stopped for longer than the lease)."""
        slot = slot or self.slots[0]
        taken_over = threading.Event()
        try:
            return self._measure_trial(study, trial, params, slot, taken_over)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not self.storage.get_trial(trial._trial_id).state.is_finished():
                raise
            taken_over.set()
        finally:
            if taken_over.is_set():
                say(f"L{self.context}: trial {trial.number} was failed by another worker (no heartbeat for "
                     f"{self.options.lease_s:.0f} s) and its config queued again; this measurement is dropped")
        return None

    def _measure_trial(self, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], slot: Slot,
                       taken_over: threading.Event) -> FrozenTrial | None:
        is_baseline = bool(trial.user_attrs.get("baseline"))
        requeued_from = trial.user_attrs.get("requeued_from")
        # The sampler wrote 'strategy' through the storage; the Trial's cache lacks it.
        attrs = self.storage.get_trial_user_attrs(trial._trial_id)
        if is_baseline:
            trial.set_user_attr("strategy", "baseline")
        elif "strategy" not in attrs:
            original = study.get_trials(deepcopy=False)[requeued_from] if isinstance(requeued_from, int) else None
            trial.set_user_attr("strategy", (original.user_attrs.get("strategy") if original else None) or "queued")
        trial.set_user_attr("worker", identity())
        if slot.gpu is not None:
            trial.set_user_attr("gpu", slot.gpu)
        trial.set_user_attr("heartbeat", time.time())

        def heartbeat() -> None:
            try:
                trial.set_user_attr("heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                taken_over.set()  # failed as stale by another worker: stop measuring it

        def started(pid: int) -> None:  # lets an operator find the benchmark of a stuck trial
            trial.set_user_attr("bench_pid", pid)

        config, outcome = self._measure(params, self.spec.workload.repeats, on_tick=heartbeat, on_start=started,
                                        slot=slot, abandon=taken_over.is_set)
        if taken_over.is_set():
            return None
        result = outcome.result
        trial.set_user_attr("config", result.get("config") or config)
        trial.set_user_attr("stderr_tail", outcome.stderr_tail)
        trial.set_user_attr("wall_s", round(outcome.wall_s, 3))
        for key in ("env", "timings"):
            if isinstance(result.get(key), dict):
                trial.set_user_attr(key, result[key])

        value = None
        kind, message = outcome.error_kind, outcome.error_message
        if outcome.ok:
            metrics = result.get("metrics") or {}
            try:
                if is_baseline:
                    self._adopt_baseline(study, metrics, outcome.wall_s, trial.number)
                value = score(metrics, self.baseline, self.spec.objective)
            except ValueError as exc:
                kind, message = "invalid_result", str(exc)
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("counters", result.get("counters") or {})
        if value is not None and math.isfinite(value):
            trial.set_constraint(CONSTRAINT, recall_violation(result["metrics"], self.spec.objective))
            return study.tell(trial, value)
        trial.set_user_attr("error_kind", kind or "crash")
        trial.set_user_attr("error_message", message or "")
        if outcome.interrupted:
            # Not the config's fault: measure it again next run, as after a kill -9.
            trial.set_user_attr("stale", True)
            attrs = {"requeued_from": trial.number, **({"baseline": True} if is_baseline else {})}
            study.enqueue_trial(params, user_attrs=attrs)
        return study.tell(trial, state=TrialState.FAIL)

    def _adopt_baseline(self, study: optuna.Study, metrics: dict[str, Any], wall_s: float, number: int) -> None:
        self.baseline = Baseline.from_metrics(metrics)  # raises ValueError without speeds
        self.baseline_wall_s = wall_s
        study.set_user_attr("baseline", self.baseline.as_dict())
        study.set_user_attr("baseline_trial", number)
        study.set_user_attr("baseline_wall_s", round(wall_s, 3))

    # -- the loop ------------------------------------------------------------
    def run(self, deadline: float | None) -> ContextResult:
        study, space = self._open()
        with self.locks.hold(self._lock):
            self._ensure_baseline_queued(study)
        progress = Progress(self.context, self.options.n_trials,
                             len(self._counted(study.get_trials(deepcopy=False))), deadline)
        started = time.monotonic()
        try:
            self._search(study, space, deadline, progress)
        finally:
            progress.close()
        self._note_rate(study, progress.measured, time.monotonic() - started)
        if self.result.error or self.stop.kill_requested():
            return self._finish(study)
        self._await_other_workers(study)
        if self.options.confirm:
            self._confirm(study)
        else:
            self._note("confirmation skipped (--skip-confirmation); a run without it confirms")
        return self._finish(study)

    def _search(self, study: optuna.Study, space, deadline: float | None, progress: Progress) -> None:
        """One search loop per slot; several slots (--gpus) run in threads, each driving
        its own benchmark child. Only this process writes to the store."""
        if len(self.slots) == 1:
            self._search_loop(study, space, deadline, progress, self.slots[0])
            return
        errors: list[BaseException] = []

        def drive(slot: Slot) -> None:
            try:
                self._search_loop(study, space, deadline, progress, slot)
            except BaseException as exc:  # re-raised in the main thread below
                errors.append(exc)
                self._abort.set()

        threads = [threading.Thread(target=drive, args=(slot,), name=f"tune-{slot.label}", daemon=True)
                   for slot in self.slots]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
                    for notice in self.stop.notices():
                        say(notice)
        except KeyboardInterrupt:  # third Ctrl-C: the benchmarks are being killed
            self._abort.set()
            for thread in threads:
                thread.join(TERM_JOIN_S)
            raise
        if errors:
            raise errors[0]

    def _search_loop(self, study: optuna.Study, space, deadline: float | None, progress: Progress,
                     slot: Slot) -> None:
        while not self._abort.is_set():
            step = self._next_trial(study, space, deadline)
            if step is _DONE:
                return
            if step is _WAIT:
                time.sleep(WAIT_S)
                continue
            trial, params = step
            frozen = self._run_trial(study, trial, params, slot)
            if frozen is None:
                continue  # taken over by another worker
            if frozen.user_attrs.get("baseline") and self.baseline is None:
                progress.trial(frozen, params, None, slot)
                self.result.error = (
                    f"the baseline config ({fmt_config(params)}) failed: "
                    f"{frozen.user_attrs.get('error_kind')}: {frozen.user_attrs.get('error_message')}"
                    + stderr_hint(frozen)
                )
                self._abort.set()
                return
            progress.trial(frozen, params, self._best(study), slot)

    def _next_trial(self, study: optuna.Study, space, deadline: float | None):
        """The next trial to measure, as (trial, params); or _WAIT (other workers' trials
        are in flight and may yet be cut off) or _DONE. Holds the study's lock, so the
        sampler sees every trial other workers started and no config is taken twice."""
        with self.locks.hold(self._lock):
            if self.stop.stop_requested or self._abort.is_set():
                return _DONE
            if self.shared:
                self._recover_others(study)
            trials = study.get_trials(deepcopy=False)
            counted = self._counted(trials)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            n_trials = self.options.n_trials
            if n_trials is not None and len(counted) >= n_trials:
                return _DONE
            if deadline is not None and time.monotonic() >= deadline:
                self._note("wall-time budget reached")
                return _DONE
            if n_trials is not None and len(counted) + len(running) >= n_trials:
                return _WAIT
            if self.baseline is None:
                self._load_baseline(study)
            if self.baseline is None:
                if not any(t.user_attrs.get("baseline") for t in waiting):
                    if any(t.user_attrs.get("baseline") for t in running):
                        return _WAIT  # another worker (or thread) is measuring it
                    failed = [t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.FAIL
                              and not t.user_attrs.get("stale") and t.number >= self._first_new_trial]
                    if failed:
                        t = failed[-1]
                        self.result.error = (f"the baseline config failed on another worker (trial {t.number}): "
                                             f"{t.user_attrs.get('error_kind')}: {t.user_attrs.get('error_message')}")
                        self._abort.set()
                        return _DONE
                    study.enqueue_trial(self.baseline_config, user_attrs={"baseline": True})
            elif not waiting and self.sampler.remaining(study) == 0:
                if running:
                    return _WAIT
                self._note(f"all {len(space)} valid configs measured")
                return _DONE
            trial = study.ask()
            params = {k: trial.suggest_categorical(k, space.values[k]) for k in space.knob_names}
            return trial, params

    def _note_rate(self, study: optuna.Study, measured: int, seconds: float) -> None:
        """This run's throughput, and with --gpus the study's trials per GPU."""
        if measured and seconds > 0:
            self._note(f"this run measured {measured} trials in {fmt_time(seconds)} "
                       f"({measured / seconds * 3600:.0f}/hour)")
        if len(self.slots) > 1:
            per_gpu: dict[int, int] = {}
            for t in self._counted(study.get_trials(deepcopy=False)):
                if isinstance(t.user_attrs.get("gpu"), int):
                    per_gpu[t.user_attrs["gpu"]] = per_gpu.get(t.user_attrs["gpu"], 0) + 1
            self._note("trials per GPU " + ", ".join(f"{g}: {n}" for g, n in sorted(per_gpu.items())))

    def _recover_others(self, study: optuna.Study) -> None:
        """Fail and queue again the trials of workers that stopped (caller holds the lock)."""
        recovered = recover_stale_trials(self.storage, study, single_writer=False, lease_s=self.options.lease_s)
        if recovered:
            say(f"L{self.context}: trial(s) {', '.join(map(str, recovered))} of a worker that stopped were "
                 "marked stale and queued again")

    def _await_other_workers(self, study: optuna.Study) -> None:
        """On a shared store, wait until other workers' trials of this study finish (or
        are found cut off), so that every worker confirms and reports the same trials."""
        if not self.shared:
            return
        said = False
        while not self.stop.stop_requested:
            with self.locks.hold(self._lock):
                self._recover_others(study)
                running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
            if not running:
                return
            if not said:
                say(f"L{self.context}: waiting for {len(running)} trial(s) of other workers before confirming")
                said = True
            time.sleep(WAIT_S)

    def _best(self, study: optuna.Study) -> FrozenTrial | None:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if confirmation.is_feasible(t)]
        return max(complete, key=lambda t: t.value) if complete else None

    # -- confirmation and summary ---------------------------------------------
    def _confirm(self, study: optuna.Study) -> None:
        # One worker confirms at a time; the next finds the verdict current and keeps it.
        with self.locks.hold(f"confirm:{study.study_name}"):
            self._confirm_locked(study)

    def _confirm_locked(self, study: optuna.Study) -> None:
        settings = self.spec.confirmation
        trials = study.get_trials(deepcopy=False)
        baseline_trial = self._baseline_trial(trials)
        if baseline_trial is None or self.baseline is None or settings.top_k == 0:
            return
        if confirmation.is_current(study, settings):
            self.result.verdict = study.user_attrs[confirmation.ATTR]
            return
        presses_at_start = self.stop.presses

        def measure(params: dict[str, Any], repeats: int) -> TrialOutcome | None:
            if self.stop.presses > presses_at_start:
                return None  # Ctrl-C during confirmation: no further measurement
            _, outcome = self._measure(params, repeats)
            if outcome.interrupted:
                return None
            say(f"L{self.context} confirm {fmt_config(params)} ({repeats} repeats): "
                 + (f"ok, score {self._score_of(outcome)}" if outcome.ok
                    else f"FAIL {outcome.error_kind}: {outcome.error_message}")
                 + f" ({outcome.wall_s:.1f} s)")
            return outcome

        verdict = confirmation.confirm(
            study, baseline_trial=baseline_trial, baseline=self.baseline, weights=self.spec.objective,
            settings=settings, measure=measure, log=lambda msg: say(f"L{self.context}: {msg}"),
        )
        if verdict is None:
            self.result.notes.append("confirmation cancelled; it runs again next time")
        self.result.verdict = verdict

    def _score_of(self, outcome: TrialOutcome) -> str:
        """One process's score, as text: confirmation shows how far processes differ."""
        try:
            return f"{score(outcome.result.get('metrics') or {}, self.baseline, self.spec.objective):.3f}"
        except ValueError:
            return "n/a"

    def _finish(self, study: optuna.Study) -> ContextResult:
        trials = study.get_trials(deepcopy=False)
        counted = self._counted(trials)
        self.result.finished = len(counted)
        self.result.failed = sum(1 for t in counted if t.state == TrialState.FAIL)
        self.result.best = self._best(study)
        base = self._baseline_trial(trials)
        self.result.baseline_value = base.value if base else None
        return self.result
