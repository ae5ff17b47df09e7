"""`autotune tune`: search the scheduling knobs for each context length of a study spec.

Per context length one Optuna study (autotune.store names it). Its first trial is the
baseline, the runner's current default config; then the spec's strategy proposes
configs until the budget (trials and/or wall time) ends; each is measured in a
benchmark child (autotune.trials), scored (autotune.objective) and told to Optuna with
its metrics as user attrs. Then the top configs are confirmed (autotune.confirm).

Ctrl-C stops after the running trial (then confirms); a second Ctrl-C kills that
trial's benchmark (its config is queued for the next run). A killed tuner resumes
when the same command runs again.

Several tuners may share a server store (PostgreSQL): proposals, recovery and
confirmation take named locks in the database (autotune.locks), running trials send
heartbeats, and a trial whose worker is gone is failed and queued again once. With
--gpus one search thread per GPU drives its own benchmark child (autotune.workers).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from autotune import confirm as confirmation
from autotune.cli import UserError
from autotune.objective import CONSTRAINT, Baseline, median, recall_of, recall_violation, score
from autotune.spec import StudySpec, load_spec
from autotune.locks import NamedLocks
from autotune.store import (
    STALE_AFTER_S,
    OpenedStudy,
    StorageURL,
    WriterLock,
    machine_fingerprint,
    open_storage,
    open_study,
    parse_storage_url,
    recover_stale_trials,
    study_name,
)
from autotune.trials import TrialOutcome, run_benchmark
from autotune.workers import Slot, gpu_slots, identity, parse_gpus

KNOBS = ("workers", "heads_per_band", "chunk_size", "T_inner")
# How often a worker with nothing to start looks at the study again (other workers'
# trials finishing, or being cut off).
WAIT_S = 1.0
TERM_JOIN_S = 30.0  # after a third Ctrl-C, how long the search threads get to stop
_WAIT, _DONE = object(), object()  # what ContextTuner._next_trial returns besides a trial


# ----------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        return parse_gpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="FILE", help="study spec (TOML), e.g. studies/cpu-quick.toml")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL; overrides the spec's `storage`")
    parser.add_argument("--n-trials", type=_positive_int, metavar="N",
                        help="trials per context length, baseline included, counted over resumes "
                             "(overrides [search] n_trials)")
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                        help="wall time of this run's search over all context lengths "
                             "(overrides [search] timeout_s); confirmation runs after it")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the search strategy (overrides [search] seed)")
    parser.add_argument("--new-study", action="store_true",
                        help="start new studies beside existing ones (name~2, ...) instead of resuming, "
                             "e.g. after a change of machine, torch or project version")
    parser.add_argument("--skip-confirmation", action="store_true",
                        help="search only; a later run without this flag confirms (split a long run into parts)")
    parser.add_argument("--gpus", type=_gpu_list, default=(), metavar="0,1",
                        help="measure on these GPUs, one benchmark per GPU at a time (CUDA_VISIBLE_DEVICES); "
                             "the trials are spread over them")
    parser.add_argument("--lease", type=_positive_float, default=STALE_AFTER_S, metavar="SECONDS",
                        help="on a shared store (PostgreSQL), a running trial whose worker sent no heartbeat "
                             f"for this long is taken as cut off, failed and queued again (default {STALE_AFTER_S:.0f}); "
                             "a worker that died on this host is noticed at once")


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


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.study)
    options = TuneOptions(
        storage=args.storage or spec.storage,
        n_trials=args.n_trials if args.n_trials is not None else spec.search.n_trials,
        timeout_s=args.timeout if args.timeout is not None else spec.search.timeout_s,
        seed=args.seed if args.seed is not None else spec.search.seed,
        new_study=args.new_study,
        gpus=args.gpus,
        lease_s=args.lease,
        confirm=not args.skip_confirmation,
    )
    return tune(spec, options)


# ------------------------------------------------------------------- Ctrl-C
class StopControl:
    """Counts Ctrl-C presses. The handler only counts (printing from a signal handler
    can hit a half-written stream); `notices` says what the presses mean."""

    def __init__(self) -> None:
        self.presses = 0
        self._reported = 0
        self._previous: Any = None

    def __enter__(self) -> "StopControl":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.presses += 1
        if self.presses >= 3:
            raise KeyboardInterrupt

    @property
    def stop_requested(self) -> bool:
        return self.presses >= 1

    def kill_requested(self) -> bool:
        return self.presses >= 2

    def notices(self) -> list[str]:
        out = []
        while self._reported < min(self.presses, 2):
            self._reported += 1
            out.append(
                "Ctrl-C: stopping after the running trial, then confirming; Ctrl-C again kills it"
                if self._reported == 1
                else "Ctrl-C again: killing the running benchmark (its config is queued for the next run)"
            )
        return out


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _fmt_config(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


# -------------------------------------------------------------- one context
@dataclass
class ContextResult:
    context: int
    study: str | None = None
    finished: int = 0
    failed: int = 0
    best: FrozenTrial | None = None
    baseline_value: float | None = None
    verdict: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


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
            _say(f"L{self.context}: new study {name}; baseline {_fmt_config(baseline_cfg)} ({source})")
        with self.locks.hold(self._lock):
            recovered = recover_stale_trials(self.storage, opened.study, single_writer=not self.shared,
                                             lease_s=self.options.lease_s)
            self._first_new_trial = len(opened.study.get_trials(deepcopy=False))
        if recovered:
            _say(f"L{self.context}: resuming {name}: trial(s) {', '.join(map(str, recovered))} were cut off; "
                 "marked stale and queued again")
        elif not opened.created:
            _say(f"L{self.context}: resuming {name}")
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
        spec = self.spec
        return {
            "shape": spec.model.shape,
            "dtype": spec.model.dtype,
            "device": self.device,
            "backend": params.get("backend", spec.model.backends[0]),
            **{k: params[k] for k in KNOBS},
            "context": self.context,
            "new_tokens": spec.workload.new_tokens,
            "batch": spec.workload.batch,
            "repeats": repeats,
            "seed": spec.workload.seed,
            # The child stops itself a little before the hard kill, with a clean result.
            "time_limit_s": round(max(1.0, timeout_s - min(30.0, 0.1 * timeout_s)), 1),
            "compile": spec.model.compile,
        }

    def _measure(self, params: dict[str, Any], repeats: int, on_tick=None, on_start=None, *,
                 slot: Slot | None = None, abandon=None) -> tuple[dict[str, Any], TrialOutcome]:
        """abandon: polled with the Ctrl-C check; True kills the benchmark (its trial was
        taken over by another worker)."""
        timeout_s = self._trial_timeout(repeats)
        config = self.bench_config(params, repeats, timeout_s)
        slot = slot or self.slots[0]

        def cancel() -> bool:
            for notice in self.stop.notices():
                _say(notice)
            return self.stop.kill_requested() or bool(abandon and abandon())

        outcome = run_benchmark(config, timeout_s=timeout_s, command=self.options.bench_command, env=slot.env(),
                                on_tick=on_tick, tick_s=self.options.heartbeat_s, cancel=cancel, on_start=on_start)
        for notice in self.stop.notices():
            _say(notice)
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
                _say(f"L{self.context}: trial {trial.number} was failed by another worker (no heartbeat for "
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
        progress = _Progress(self.context, self.options.n_trials,
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
            self.result.notes.append("confirmation skipped (--skip-confirmation); a run without it confirms")
        return self._finish(study)

    def _search(self, study: optuna.Study, space, deadline: float | None, progress: "_Progress") -> None:
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
                        _say(notice)
        except KeyboardInterrupt:  # third Ctrl-C: the benchmarks are being killed
            self._abort.set()
            for thread in threads:
                thread.join(TERM_JOIN_S)
            raise
        if errors:
            raise errors[0]

    def _search_loop(self, study: optuna.Study, space, deadline: float | None, progress: "_Progress",
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
                    f"the baseline config ({_fmt_config(params)}) failed: "
                    f"{frozen.user_attrs.get('error_kind')}: {frozen.user_attrs.get('error_message')}"
                    + _stderr_hint(frozen)
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
            self._note(f"this run measured {measured} trials in {_fmt_time(seconds)} "
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
            _say(f"L{self.context}: trial(s) {', '.join(map(str, recovered))} of a worker that stopped were "
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
                _say(f"L{self.context}: waiting for {len(running)} trial(s) of other workers before confirming")
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
            _say(f"L{self.context} confirm {_fmt_config(params)}: "
                 + ("ok" if outcome.ok else f"FAIL {outcome.error_kind}: {outcome.error_message}")
                 + f" ({outcome.wall_s:.1f} s)")
            return outcome

        verdict = confirmation.confirm(
            study, baseline_trial=baseline_trial, baseline=self.baseline, weights=self.spec.objective,
            settings=settings, measure=measure, log=lambda msg: _say(f"L{self.context}: {msg}"),
        )
        if verdict is None:
            self.result.notes.append("confirmation cancelled; it runs again next time")
        self.result.verdict = verdict

    def _finish(self, study: optuna.Study) -> ContextResult:
        trials = study.get_trials(deepcopy=False)
        counted = self._counted(trials)
        self.result.finished = len(counted)
        self.result.failed = sum(1 for t in counted if t.state == TrialState.FAIL)
        self.result.best = self._best(study)
        base = self._baseline_trial(trials)
        self.result.baseline_value = base.value if base else None
        return self.result


class _Progress:
    """The progress of one context's search: a tqdm bar on a terminal, and one log
    line per trial everywhere (trial i/N, strategy, config, score, best, ETA)."""

    def __init__(self, context: int, total: int | None, done: int, deadline: float | None):
        self.context, self.total, self.done, self.deadline = context, total, done, deadline
        self._lock = threading.Lock()  # the search threads of --gpus report here together
        self.started, self.measured = time.monotonic(), 0
        self.bar = tqdm(total=total, initial=min(done, total) if total else done, desc=f"L{context}",
                        unit="trial", file=sys.stderr, dynamic_ncols=True, disable=None)

    def eta(self) -> float | None:
        now = time.monotonic()
        left = None if self.deadline is None else max(0.0, self.deadline - now)
        if self.total is not None and self.measured:
            by_count = (now - self.started) / self.measured * max(0, self.total - self.done)
            left = by_count if left is None else min(left, by_count)
        return left

    def trial(self, trial: FrozenTrial, params: dict[str, Any], best: FrozenTrial | None,
              slot: Slot | None = None) -> None:
        with self._lock:
            self._trial(trial, params, best, slot.label if slot is not None else "")

    def _trial(self, trial: FrozenTrial, params: dict[str, Any], best: FrozenTrial | None, where: str) -> None:
        if not trial.user_attrs.get("stale"):
            self.done += 1
            self.measured += 1
            self.bar.update(1)
        strategy = trial.user_attrs.get("strategy")
        if trial.state == TrialState.COMPLETE:
            m = trial.user_attrs.get("metrics") or {}
            last = f"{trial.value:.3f}"
            detail = (f"score {last} (prefill {median(m.get('prefill_tok_s')) or 0:.4g} tok/s, decode "
                      f"{median(m.get('decode_tok_s')) or 0:.4g} tok/s, recall {recall_of(m):.3f})")
        else:
            last = f"FAIL({trial.user_attrs.get('error_kind')})"
            detail = f"FAIL {trial.user_attrs.get('error_kind')}: {trial.user_attrs.get('error_message')}"
        best_text = f"{best.value:.3f}" if best is not None else "n/a"
        eta = self.eta()
        eta_text = _fmt_time(eta) if eta is not None else "?"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        where = f" on {where}" if where else ""
        _say(f"L{self.context} trial {count} (#{trial.number}){where} [{strategy}] {_fmt_config(params)}: {detail}; "
             f"best {best_text}; {trial.user_attrs.get('wall_s', 0):.1f} s; ETA {eta_text}")
        self.bar.set_postfix_str(f"{strategy} last={last} best={best_text}")

    def close(self) -> None:
        self.bar.close()


def _stderr_hint(trial: FrozenTrial) -> str:
    tail = (trial.user_attrs.get("stderr_tail") or "").strip().splitlines()[-5:]
    return ("\n  stderr:\n    " + "\n    ".join(tail)) if tail else ""


# -------------------------------------------------------------------- driver
def _resolve_device(spec: StudySpec):
    from kernels import DeviceUnavailableError, resolve_device

    try:
        return resolve_device(spec.model.device)
    except DeviceUnavailableError as exc:
        raise UserError(f"{spec.path}: [model] device = {spec.model.device!r}: {exc}") from None


def _summary_lines(result: ContextResult) -> list[str]:
    head = f"L{result.context} {result.study or ''}".rstrip()
    if result.error:
        return [f"{head}: ERROR {result.error}"]
    lines = [f"{head}: {result.finished} trials ({result.failed} failed)"
             + (f"; {'; '.join(result.notes)}" if result.notes else "")]
    if result.best is not None:
        base = f"{result.baseline_value:.3f}" if result.baseline_value is not None else "n/a"
        lines.append(f"  best score {result.best.value:.3f} (baseline {base}): trial {result.best.number} "
                     f"[{result.best.user_attrs.get('strategy')}] {_fmt_config(result.best.params)}")
    if result.verdict:
        v = result.verdict
        label = "tuned config confirmed" if v["verdict"] == "improved" else "baseline stays the default"
        lines.append(f"  confirmation: {label}: {v.get('reason', '')}")
    return lines


def tune(spec: StudySpec, options: TuneOptions) -> int:
    """Run the search for every context length of `spec`; returns the exit code."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    device = _resolve_device(spec)
    device_str = spec.model.device if spec.model.device != "auto" else device.type
    slots, gpu_model = gpu_slots(options.gpus, device, spec.model.device)
    fingerprint = machine_fingerprint(device)
    if gpu_model is not None:
        fingerprint["device_name"] = gpu_model  # the model of the GPUs measured on, not of cuda:0
    if options.gpus and device.type == "cpu":
        _say(f"--gpus with device cpu: {len(slots)} benchmarks run side by side on the CPU and slow each other down")
    location = parse_storage_url(options.storage)
    lock = WriterLock(location.sqlite_path) if location.sqlite_path is not None else nullcontext()
    results: list[ContextResult] = []
    with lock, StopControl() as stop:
        storage = open_storage(location)
        locks = NamedLocks.for_storage(storage, shared=not location.is_sqlite)
        start = time.monotonic()
        contexts = spec.workload.contexts
        for i, context in enumerate(contexts):
            if stop.stop_requested:
                break
            deadline = None
            if options.timeout_s is not None:
                # Split what is left evenly over the contexts still to come.
                left = options.timeout_s - (time.monotonic() - start)
                deadline = time.monotonic() + max(0.0, left) / (len(contexts) - i)
            tuner = ContextTuner(spec, options, context, storage=storage, location=location,
                                 device_kind=device.type, device=device_str, fingerprint=fingerprint, stop=stop,
                                 slots=tuple(slots), locks=locks)
            results.append(tuner.run(deadline))
        interrupted = stop.stop_requested
    for result in results:
        for line in _summary_lines(result):
            print(line)
    if interrupted:
        skipped = [c for c in spec.workload.contexts if c not in {r.context for r in results}]
        if skipped:
            print(f"stopped by Ctrl-C; not started: L{', L'.join(map(str, skipped))}. Run the same command to resume.")
        else:
            print("stopped by Ctrl-C. Run the same command to resume.")
        return 130
    return 1 if any(r.error for r in results) else 0
