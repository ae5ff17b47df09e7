"""What a study holds, per config of the space, kept up to date incrementally.

Every strategy reads the study through a `History`: which configs are taken (in any
trial, any state), the score of each measured config, which failed, and the finished
trials in the order they were seen. `sync` only looks at trials it has not settled yet,
so a proposal stays cheap at thousands of trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.space import DiscreteSpace

WARM_START_ATTR = "warm_start"  # study user attr: another study's configs, best first


@dataclass(frozen=True)
class Event:
    """A finished trial of a config of the space."""

    index: int  # config index
    value: float | None  # score, sign-adjusted so higher is better; None for a failure
    strategy: str | None  # user attr 'strategy' of the trial
    trial_number: int


class History:
    def __init__(self, space: DiscreteSpace):
        self.space = space
        n = len(space)
        self.taken = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)
        self._value_sum = np.zeros(n)
        self._value_count = np.zeros(n, dtype=np.int64)
        self.events: list[Event] = []
        # free configs as a swap-remove array: O(1) removal and uniform sampling
        self._free = np.arange(n, dtype=np.int64)
        self._free_pos = np.arange(n, dtype=np.int64)
        self.n_free = n
        self._settled_prefix = 0  # trials [0, prefix) are finished and recorded
        self._recorded: set[int] = set()  # finished trials recorded beyond the prefix
        self._sign = 1.0
        self._utility_cache: tuple[int, np.ndarray] | None = None
        self.version = 0  # bumps whenever an outcome is recorded
        # configs another study ranked best first (a warm start), read once from the study
        self.prior: np.ndarray | None = None

    # -- reading the study ------------------------------------------------------
    def sync(self, study: optuna.Study, current_trial: int | None = None) -> None:
        """Fold in trials that changed since the last call (the current trial is skipped)."""
        self._sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        if self.prior is None:
            self.prior = self._read_prior(study)
        trials = study.get_trials(deepcopy=False)
        settled = True
        for trial in trials[self._settled_prefix :]:
            if trial.number == current_trial:
                settled = False
                continue
            if trial.state.is_finished():
                if trial.number not in self._recorded:
                    self._record(trial)
                if settled:
                    self._settled_prefix += 1
                    self._recorded.discard(trial.number)
                else:
                    self._recorded.add(trial.number)
            else:
                index = self._config_index(trial)
                if index is not None:
                    self.claim(index)
                settled = False

    def _read_prior(self, study: optuna.Study) -> np.ndarray:
        """The valid configs of the study's warm-start ranking (user attr WARM_START_ATTR)."""
        ranking = study.user_attrs.get(WARM_START_ATTR) or []
        found = (self.space.index(c) for c in ranking if isinstance(c, dict))
        return np.asarray([i for i in found if i is not None], dtype=np.int64)

    def _config_index(self, trial: FrozenTrial) -> int | None:
        # a running trial has its params once suggested; a waiting one only its fixed params
        params: Any = trial.params
        if not all(k in params for k in self.space.knob_names):
            params = trial.system_attrs.get("fixed_params") or {}
        return self.space.index(params)

    def _record(self, trial: FrozenTrial) -> None:
        index = self._config_index(trial)
        if index is None:
            return  # a config outside the space (e.g. a baseline off the value lists)
        self.claim(index)
        value: float | None = None
        if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            feasible = all(c <= 0.0 for c in trial.constraints.values())
            if feasible:
                value = self._sign * float(trial.value)
        if value is None:
            self.failed[index] = True
        else:
            self._value_sum[index] += value
            self._value_count[index] += 1
        self.events.append(Event(index, value, trial.user_attrs.get("strategy"), trial.number))
        self.version += 1

    # -- the free set -----------------------------------------------------------
    def claim(self, index: int) -> None:
        """Mark a config taken (no strategy may propose it again)."""
        if self.taken[index]:
            return
        self.taken[index] = True
        pos = self._free_pos[index]
        last = self._free[self.n_free - 1]
        self._free[pos] = last
        self._free_pos[last] = pos
        self._free[self.n_free - 1] = index
        self._free_pos[index] = self.n_free - 1
        self.n_free -= 1

    def free_indices(self) -> np.ndarray:
        """Configs no trial holds (a view; do not modify)."""
        return self._free[: self.n_free]

    def random_free(self, rng: np.random.Generator) -> int:
        return int(self._free[rng.integers(self.n_free)])

    # -- outcomes ---------------------------------------------------------------
    @property
    def measured(self) -> np.ndarray:
        """Indices of configs with at least one completed, feasible measurement."""
        return np.flatnonzero(self._value_count > 0)

    @property
    def observed(self) -> np.ndarray:
        """Indices of configs measured or failed."""
        return np.flatnonzero((self._value_count > 0) | self.failed)

    def values(self) -> np.ndarray:
        """Mean score per config (higher is better), NaN where never measured."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._value_count > 0, self._value_sum / np.maximum(self._value_count, 1), np.nan)

    def utility(self) -> np.ndarray:
        """Per config a score in [0, 1] that every strategy learns from; NaN if unobserved.

        Measured configs get their rank among the measured, scaled into (0, 1), so the
        strategies are blind to the objective's units and outliers; failures (and
        infeasible results) get 0, below every measurement: bad, never unmeasured.
        """
        if self._utility_cache is not None and self._utility_cache[0] == self.version:
            return self._utility_cache[1]
        u = np.full(len(self.space), np.nan)
        u[self.failed] = 0.0
        idx = self.measured
        if len(idx):
            vals = self.values()[idx]
            order = np.argsort(vals, kind="stable")
            ranks = np.empty(len(idx))
            ranks[order] = np.arange(1, len(idx) + 1)
            # ties share their mean rank
            uniq, inverse = np.unique(vals, return_inverse=True)
            if len(uniq) < len(vals):
                ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
            u[idx] = ranks / (len(idx) + 1)
        self._utility_cache = (self.version, u)
        return u

    def since_improvement(self) -> int:
        """Finished trials since the last one that beat every earlier result."""
        best, last = -math.inf, 0
        for n, event in enumerate(self.events, start=1):
            if event.value is not None and event.value > best:
                best, last = event.value, n
        return len(self.events) - last

    def best_value(self) -> float | None:
        idx = self.measured
        return float(np.max(self.values()[idx])) if len(idx) else None
