"""The strategy interface and the Optuna sampler that runs any strategy.

A `Strategy` only chooses: given the `History` of a study it returns a free config of
the space. `StrategySampler` is the one Optuna `BaseSampler` around it: it keeps the
history in step with the study, proposes a whole config per trial (relative sampling),
writes the user attr 'strategy' and raises `SpaceExhausted` when nothing is left.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial

from autotune.space import DiscreteSpace
from autotune.strategies.history import History

STRATEGY_ATTR = "strategy"


class SpaceExhausted(RuntimeError):
    """Every valid config of the space is measured, failed or in flight."""


class Proposal(NamedTuple):
    index: int  # a free config of the space
    strategy: str  # who proposed it (the portfolio names its sub-strategy)


class Strategy(abc.ABC):
    """Chooses the next config. Subclasses set `name` and implement `propose`."""

    name: str = "?"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator):
        self.space = space
        self.rng = rng

    @abc.abstractmethod
    def propose(self, history: History) -> Proposal:
        """A config index from history.free_indices() (history.n_free >= 1 is guaranteed)."""

    def ready(self, history: History) -> bool:
        """Whether its model has the data it needs; a portfolio picks only ready members."""
        return True

    def reseed(self, rng: np.random.Generator) -> None:
        self.rng = rng


class StrategySampler(BaseSampler):
    """An Optuna sampler proposing whole configs of `space` with `strategy`.

    Trials must suggest every knob with `trial.suggest_categorical(knob, space.values[knob])`.
    Enqueued trials keep their fixed params and are never touched (Optuna does not call
    the sampler for fixed params); a partly fixed trial gets a random free config that
    agrees with its fixed values.
    """

    def __init__(self, space: DiscreteSpace, strategy: Strategy, seed: int | None = None):
        self.space = space
        self.strategy = strategy
        self._distributions = space.distributions()
        self._independent = RandomSampler(seed=seed)
        self._fallback_rng = np.random.default_rng(seed)
        self._history: History | None = None
        self._history_key: tuple | None = None

    def __str__(self) -> str:
        return f"StrategySampler({self.strategy.name})"

    # -- Optuna interface ---------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        history = self.history(study, current_trial=trial.number)
        fixed = trial.system_attrs.get("fixed_params") or {}
        if history.n_free == 0:
            raise SpaceExhausted(
                f"all {len(self.space)} valid configs are measured, failed or in flight; "
                "nothing is left to propose"
            )
        if any(k in fixed for k in self.space.knob_names):
            proposal = self._agreeing_with(fixed, history)
        else:
            proposal = self.strategy.propose(history)
        if not 0 <= proposal.index < len(self.space) or history.taken[proposal.index]:
            raise AssertionError(f"{proposal.strategy} proposed config {proposal.index}, which is not free")
        history.claim(proposal.index)
        config = self.space.configs[proposal.index]
        study._storage.set_trial_user_attr(trial._trial_id, STRATEGY_ATTR, proposal.strategy)
        # Optuna hands the sampler the Trial's own cached FrozenTrial: keep it in step with
        # the storage, as Trial.set_user_attr does, so trial.user_attrs shows the strategy
        trial.user_attrs[STRATEGY_ATTR] = proposal.strategy
        return dict(config)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # only parameters outside the space land here; knobs always come from sample_relative
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._independent.reseed_rng()
        self._fallback_rng = np.random.default_rng()
        self.strategy.reseed(np.random.default_rng())

    # -- helpers for callers ------------------------------------------------------
    def history(self, study: optuna.Study, current_trial: int | None = None) -> History:
        """The history of `study`, brought up to date (one per study; a new study starts fresh)."""
        key = (id(study._storage), study._study_id)
        if self._history is None or self._history_key != key:
            self._history = History(self.space)
            self._history_key = key
        self._history.sync(study, current_trial)
        return self._history

    def remaining(self, study: optuna.Study) -> int:
        """How many valid configs no trial of `study` holds yet (0: the next trial would raise)."""
        return self.history(study).n_free

    def _agreeing_with(self, fixed: dict[str, Any], history: History) -> Proposal:
        free = history.free_indices()
        mask = np.ones(len(free), dtype=bool)
        for k, knob in enumerate(self.space.knob_names):
            if knob in fixed:
                pos = self.space.values[knob].index(fixed[knob]) if fixed[knob] in self.space.values[knob] else -1
                mask &= self.space.coords[free, k] == pos
        if not mask.any():
            raise SpaceExhausted(f"no free valid config agrees with the fixed params {fixed}")
        choices = free[mask]
        return Proposal(int(choices[self._fallback_rng.integers(len(choices))]), "random")
