"""One study as a tuner works on it: opened or resumed, its baseline, its recovery.

A StudySession creates the study of one context length (or resumes the newest of its
family, refusing another machine's or another spec's), fixes the baseline config (the
runner's current default for this prompt length), adopts the baseline's speeds once
some worker measured them, and fails and queues again the trials a stopped tuner left
RUNNING. On a shared store these steps hold the study's named lock (autotune.store.locks).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import confirm as confirmation
from autotune import records as R
from autotune.defaults import builtin_default, pick_choice
from autotune.errors import UserError
from autotune.store.locks import NamedLocks
from autotune.names import KERNEL_KNOBS, KNOBS
from autotune.objective import Baseline
from autotune.records import TrialRecord
from autotune.space import SearchSpace, SpaceError
from autotune.spec import StudySpec
from autotune.store.storage import OpenedStudy, StorageURL, open_study
from autotune.store.recovery import recover_stale_trials
from autotune.store.layout import study_name
from autotune.strategies import make_sampler
from autotune.tune_output import fmt_config, say
from autotune.warm_start import WarmStartError, seed_study, study_in_store

# kernels is imported where the model's shape is read: it loads torch, which
# `autotune tune --help` and a spec error never need.


class StudySession:
    def __init__(self, spec: StudySpec, context: int, *, storage, location: StorageURL, device_kind: str,
                 fingerprint: dict[str, str], locks: NamedLocks, lease_s: float, new_study: bool = False,
                 seed: int | None = None, warm_start: str | None = None):
        self.spec, self.context = spec, context
        self.warm_start = warm_start  # an export file or store URL whose ranking seeds the study
        self.storage, self.location = storage, location
        self.device_kind, self.fingerprint = device_kind, fingerprint
        self.locks, self.lease_s, self.new_study, self.seed = locks, lease_s, new_study, seed
        self.baseline: Baseline | None = None
        self.baseline_wall_s: float | None = None
        self.study: optuna.Study | None = None
        self.space = None
        self.dhqk = 0  # the model's head size (a kernel constraint)
        self.sampler = None
        self.baseline_config: dict[str, Any] = {}
        self.lock_name = ""
        self.first_new_trial = 0  # trials before this number were there when this run began

    @property
    def shared(self) -> bool:
        """Other tuners may work on this store at the same time (a server database)."""
        return self.location is not None and not self.location.is_sqlite

    @property
    def name(self) -> str:
        return self.study.study_name

    # -- opening -------------------------------------------------------------
    def _runner_default(self, num_heads: int) -> tuple[dict[str, Any], str]:
        """The config the runner uses today for this prompt length, and where from."""
        backend = self.spec.model.backends[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no defaults file yet is the normal first run
            choice = pick_choice(self.spec.model.shape, self.device_kind, backend, self.context,
                                 dtype=self.spec.model.dtype, num_heads=num_heads, batch=self.spec.workload.batch)
        knobs = dict(choice.config)
        source = (f"the defaults file's entry for context {choice.context} (study {choice.study}, trial {choice.trial})"
                  if choice.source == "file" else "built-in default")
        if knobs["chunk_size"] > self.context or knobs["workers"] > num_heads // knobs["heads_per_band"]:
            knobs, source = builtin_default(num_heads, self.context), "built-in default"
        if len(self.spec.model.backends) > 1:
            knobs = {"backend": backend, **knobs}
        if self.spec.kernel_space:  # the kernel parameters the runner uses today
            from kernels.registry import kernel_params

            kernel = {**{k: p.default for k, p in kernel_params().items()}, **choice.kernel}
            knobs.update({k: kernel[k] for k in KERNEL_KNOBS if k in self.spec.kernel_space})
        return knobs, source

    def _space_values(self, baseline_cfg: dict[str, Any]) -> dict[str, list[Any]]:
        """The spec's value lists plus the baseline's values, so the baseline is a
        config of the space (its trial has the same categorical params as the rest)."""
        values: dict[str, list[Any]] = {}
        if len(self.spec.model.backends) > 1:
            values["backend"] = list(self.spec.model.backends)
        for knob in KNOBS:
            values[knob] = sorted(set(self.spec.space[knob]) | {baseline_cfg[knob]})
        for knob, listed in self.spec.kernel_space.items():
            values[knob] = sorted(set(listed) | {baseline_cfg[knob]})
        return values

    def _build_space(self, values: dict[str, list[Any]], num_heads: int):
        try:
            return SearchSpace(values, num_heads, self.context, dhqk=self.dhqk)
        except SpaceError as exc:
            raise UserError(f"{self.spec.path}: [space] gives no valid config at context {self.context}: {exc}") from None

    def open(self) -> optuna.Study:
        """Open or resume the study, recover its stale trials, load its baseline."""
        from kernels import get_config

        spec = self.spec
        config = get_config(spec.model.shape)
        num_heads, self.dhqk = config.num_heads, config.qk_dim // config.num_heads
        baseline_cfg, source = self._runner_default(num_heads)
        values = self._space_values(baseline_cfg)
        self._build_space(values, num_heads)  # refuse a bad spec before creating anything
        base = study_name(spec.model.shape, self.device_kind, spec.model.backends, self.context,
                          spec.workload.batch)
        with self.locks.hold(f"create:{base}"):
            opened: OpenedStudy = open_study(
                self.storage, base, fingerprint=self.fingerprint, identity=spec.identity(),
                attrs={"spec": spec.to_dict(), "shape": spec.model.shape, "dtype": spec.model.dtype,
                       "device": self.device_kind, "backends": list(spec.model.backends), "context": self.context,
                       R.STUDY_SPACE: values, R.STUDY_BASELINE_CONFIG: baseline_cfg, R.STUDY_BASELINE_SOURCE: source},
                sampler=optuna.samplers.RandomSampler(), new_study=self.new_study)
        name = opened.study.study_name
        self.lock_name = f"study:{name}"
        stored = opened.study.user_attrs
        self.space = self._build_space(stored[R.STUDY_SPACE], num_heads)
        self.baseline_config = stored[R.STUDY_BASELINE_CONFIG]
        if opened.created:
            say(f"L{self.context}: new study {name}; baseline {fmt_config(baseline_cfg)} ({source})")
        with self.locks.hold(self.lock_name):
            recovered = recover_stale_trials(self.storage, opened.study, single_writer=not self.shared,
                                             lease_s=self.lease_s)
            self.first_new_trial = len(opened.study.get_trials(deepcopy=False))
        if recovered:
            say(f"L{self.context}: resuming {name}: trial(s) {', '.join(map(str, recovered))} were cut off; "
                "marked stale and queued again")
        elif not opened.created:
            say(f"L{self.context}: resuming {name}")
        self.sampler = make_sampler(spec.search.strategy, self.space, seed=self.seed)
        self.study = optuna.load_study(study_name=name, storage=self.storage, sampler=self.sampler)
        self.load_baseline()
        with self.locks.hold(self.lock_name):
            self.ensure_baseline_queued()
            if self.warm_start is not None:
                self._seed_from(self.warm_start)
        return self.study

    def _seed_from(self, source: str) -> None:
        """Queue the best configs of another study (after the baseline) and keep its ranking as
        the strategies' prior; a resumed study gets none of them twice."""
        try:
            name = study_in_store(source, self.study.study_name) if "://" in source else None
            queued = seed_study(self.study, source, space=self.space, study_name=name, context=self.context,
                                defaults=self.baseline_config)
        except WarmStartError as exc:
            raise UserError(f"--warm-start: {exc}") from None
        if queued:
            say(f"L{self.context}: warm start from {name or source}: measuring first "
                + "; ".join(fmt_config(c) for c in queued))

    # -- baseline ------------------------------------------------------------
    def load_baseline(self) -> None:
        """The baseline's speeds, once some worker (maybe another) measured them."""
        stored = self.study.user_attrs
        if R.STUDY_BASELINE in stored:
            self.baseline = Baseline(**stored[R.STUDY_BASELINE])
            self.baseline_wall_s = stored.get(R.STUDY_BASELINE_WALL_S)

    def adopt_baseline(self, metrics: dict[str, Any], wall_s: float, number: int) -> None:
        self.baseline = Baseline.from_metrics(metrics)  # raises ValueError without speeds
        self.baseline_wall_s = wall_s
        self.study.set_user_attr(R.STUDY_BASELINE, self.baseline.as_dict())
        self.study.set_user_attr(R.STUDY_BASELINE_TRIAL, number)
        self.study.set_user_attr(R.STUDY_BASELINE_WALL_S, round(wall_s, 3))

    def baseline_trial(self, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
        trials = self.trials() if trials is None else trials
        done = [t for t in trials if t.user_attrs.get(R.BASELINE) and t.state == TrialState.COMPLETE]
        return done[0] if done else None

    def ensure_baseline_queued(self) -> None:
        """Queue the baseline unless it is measured, queued or running (caller holds the lock)."""
        trials = self.trials()
        if self.baseline_trial(trials) is not None:
            return
        pending = [t for t in trials if t.user_attrs.get(R.BASELINE) and t.state in (TrialState.WAITING, TrialState.RUNNING)]
        if not pending:
            self.study.enqueue_trial(self.baseline_config, user_attrs={R.BASELINE: True})

    def failed_baseline(self) -> TrialRecord | None:
        """A baseline trial of this run that failed for its config (not cut off)."""
        failed = [r for r in map(TrialRecord.of, self.trials()) if r.baseline and r.state == TrialState.FAIL
                  and not r.stale and r.number >= self.first_new_trial]
        return failed[-1] if failed else None

    # -- trials --------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def counted(self, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
        """Trials that count against the budget: finished, not stale."""
        return [t for t in (self.trials() if trials is None else trials) if TrialRecord.of(t).counted]

    def best(self) -> FrozenTrial | None:
        complete = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if confirmation.is_feasible(t)]
        return max(complete, key=lambda t: t.value) if complete else None

    def recover_others(self) -> None:
        """Fail and queue again the trials of workers that stopped (caller holds the lock)."""
        recovered = recover_stale_trials(self.storage, self.study, single_writer=False, lease_s=self.lease_s)
        if recovered:
            say(f"L{self.context}: trial(s) {', '.join(map(str, recovered))} of a worker that stopped were "
                "marked stale and queued again")
