"""Local: search the neighbourhood of the best configs, with restarts.

A proposal changes the incumbent (the best measured config) in one knob: every value of
every knob is tried in the context of the best config found so far, which is how a
value that is poor in most combinations but right in the optimum's is found. When no
free config is one knob away, two knobs away. Diversification: after `patience`
finished trials without a new best, the centre moves to another of the `elite` best
configs (a tournament), so a search does not sit on one basin; a centre with an empty
neighbourhood gives way to the next. Among the neighbours, the feasibility model's
likely failures are avoided and the rest are ranked by a Boltzmann-style prediction
(additive per-value means blended with measured neighbours) plus random jitter.
"""

from __future__ import annotations

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.boltzmann import predicted_utility
from autotune.strategies.feasibility import likely_feasible
from autotune.strategies.history import History


class LocalStrategy(Strategy):
    name = "local"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, elite: int = 4, patience: int = 8,
                 jitter: float = 0.15, max_radius: int = 2):
        super().__init__(space, rng)
        self.elite, self.patience, self.jitter, self.max_radius = elite, patience, jitter, max_radius

    def centres(self, history: History) -> list[int]:
        """Configs to search around, the preferred first."""
        measured = history.measured
        order = measured[np.argsort(-history.values()[measured], kind="stable")]
        elites = list(order[: self.elite])
        if len(elites) > 1 and history.since_improvement() >= self.patience:
            first = elites[1 + int(self.rng.integers(len(elites) - 1))]  # move off the stuck basin
            elites.remove(first)
            elites.insert(0, first)
        return elites + list(order[self.elite :])

    def propose(self, history: History) -> Proposal:
        free = history.free_indices()
        centres = self.centres(history)
        if not centres:
            return Proposal(history.random_free(self.rng), self.name)
        for radius in range(1, self.max_radius + 1):
            for centre in centres[: 4 * self.elite]:
                moved = (self.space.coords[free] != self.space.coords[centre][None, :]).sum(axis=1)
                near = free[moved == radius]
                if len(near):
                    return Proposal(self._pick(history, near), self.name)
        return Proposal(history.random_free(self.rng), self.name)

    def _pick(self, history: History, near: np.ndarray) -> int:
        near = likely_feasible(self.space, history, near, self.rng)
        u = history.utility()
        pred = predicted_utility(self.space, history, near, u, shrink=2.0, neighbour_weight=0.6)
        score = pred + self.jitter * self.rng.standard_normal(len(near))
        return int(near[int(np.argmax(score))])
