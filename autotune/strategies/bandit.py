"""Bandit: one arm per knob value, scored from every config observed with that value.

Each (knob, value) arm holds the utilities (0..1, failures 0) of the observed configs
that use the value. A proposal draws one plausible mean per arm (Thompson sampling on a
Beta posterior) or takes its upper confidence bound (UCB), adds them up per free config
and takes the best free config, so constraints between knobs are respected by design.
"""

from __future__ import annotations

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


def arm_statistics(space: DiscreteSpace, history: History,
                   u: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per knob: (sum of utilities, number of observations) for each value."""
    u = history.utility() if u is None else u
    seen = history.observed
    stats = []
    for k in range(len(space.knob_names)):
        col = space.coords[seen, k]
        sums = np.bincount(col, weights=u[seen], minlength=int(space.sizes[k]))
        counts = np.bincount(col, minlength=int(space.sizes[k])).astype(np.float64)
        stats.append((sums, counts))
    return stats


class BanditStrategy(Strategy):
    name = "bandit"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, method: str = "ucb",
                 prior: float = 2.0, ucb_c: float = 0.5):
        super().__init__(space, rng)
        if method not in ("thompson", "ucb"):
            raise ValueError(f"bandit method must be 'thompson' or 'ucb', got {method!r}")
        self.method = method
        self.prior = prior  # Beta(prior, prior) before any observation
        self.ucb_c = ucb_c

    def arm_scores(self, history: History) -> list[np.ndarray]:
        stats = arm_statistics(self.space, history)
        total = max(1.0, float(len(history.observed)))
        scores = []
        for sums, counts in stats:
            if self.method == "thompson":
                scores.append(self.rng.beta(self.prior + sums, self.prior + counts - sums))
            else:
                mean = (sums + 0.5 * self.prior) / (counts + self.prior)
                bonus = self.ucb_c * np.sqrt(np.log(total + 1.0) / (counts + 1e-9))
                scores.append(np.minimum(mean + bonus, 1e6))
        return scores

    def propose(self, history: History) -> Proposal:
        scores = self.arm_scores(history)
        free = history.free_indices()
        total = np.zeros(len(free))
        for k, s in enumerate(scores):
            total += s[self.space.coords[free, k]]
        # random tie-break among equally scored free configs
        best = np.flatnonzero(total >= total.max() - 1e-12)
        return Proposal(int(free[best[self.rng.integers(len(best))]]), self.name)
