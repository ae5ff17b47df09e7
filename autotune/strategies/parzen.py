"""Parzen: a tree-structured Parzen estimator (after TPE) over whole configs.

The observed configs split into good (the best `gamma` fraction by utility) and bad
(the rest, failures included). Each set gives a density over configs: a mixture with one
product kernel per observed config (so a density remembers which values occurred
together: knob interactions), plus a uniform component of weight `prior_weight`. Per
knob the kernel keeps the value with probability falling with distance: ordered knobs
by exp(-steps / (bandwidth * span)), categorical ones by exp(-1 / bandwidth) for any
other value. A proposal draws `candidates` free configs with probability proportional to
the good density and takes the one with the highest good/bad ratio (TPE's acquisition),
among those the feasibility model does not expect to fail. A warm start's ranking
(History.prior) adds its best `gamma` fraction, not yet observed here, to the good set
while the study has observed fewer than `prior_trials` configs: after that its own
measurements decide (a ranking from a partial or different machine must not hold it).
Before `startup` configs (10, TPE's usual start-up), observed or from the prior, it draws
at random and a portfolio passes it over (`ready`): with a good set of one or two configs
the density is a narrow neighbourhood of a config that is best only by chance.
"""

from __future__ import annotations

import math

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.feasibility import likely_feasible
from autotune.strategies.history import History


def kernel_tables(space: DiscreteSpace, bandwidth: float) -> list[np.ndarray]:
    """Per knob, log K[a, b]: the log probability of value b around an observed value a."""
    tables = []
    for k, ordered in enumerate(space.ordered):
        n = int(space.sizes[k])
        pos = np.arange(n)
        if ordered:
            dist = np.abs(pos[:, None] - pos[None, :]) / max(1, n - 1)
        else:
            dist = (pos[:, None] != pos[None, :]).astype(np.float64)
        w = np.exp(-dist / bandwidth)
        tables.append(np.log(w / w.sum(axis=1, keepdims=True)))
    return tables


class ParzenStrategy(Strategy):
    name = "parzen"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, gamma: float = 0.2,
                 bandwidth: float = 0.3, prior_weight: float = 1.0, candidates: int = 24,
                 max_good: int = 25, max_bad: int = 100, max_pool: int = 3000, prior_trials: int = 10,
                 startup: int = 10):
        super().__init__(space, rng)
        self.startup = startup
        self.gamma, self.prior_weight, self.candidates = gamma, prior_weight, candidates
        self.max_good, self.max_bad, self.max_pool = max_good, max_bad, max_pool
        self.prior_trials = prior_trials
        self.tables = kernel_tables(space, bandwidth)
        self.log_uniform = -float(np.sum(np.log(space.sizes.astype(np.float64))))

    def log_density(self, points: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """log of the mixture density of `points` (config indices) at each config of `pool`."""
        logk = np.zeros((len(pool), len(points)))
        for k, table in enumerate(self.tables):
            logk += table[self.space.coords[points, k][None, :], self.space.coords[pool, k][:, None]]
        parts = np.hstack([logk, np.full((len(pool), 1), self.log_uniform + math.log(self.prior_weight))])
        top = parts.max(axis=1, keepdims=True)
        return (top[:, 0] + np.log(np.exp(parts - top).sum(axis=1))) - math.log(len(points) + self.prior_weight)

    def prior_good(self, history: History) -> np.ndarray:
        """The warm start's best configs not observed yet, while the prior still counts."""
        seen = history.observed
        if history.prior is None or len(seen) >= self.prior_trials:
            return np.zeros(0, np.int64)
        prior = history.prior[: max(1, math.ceil(self.gamma * len(history.prior)))]
        return prior[~np.isin(prior, seen)]

    def ready(self, history: History) -> bool:
        return len(history.observed) + len(self.prior_good(history)) >= self.startup

    def propose(self, history: History) -> Proposal:
        if not self.ready(history):
            return Proposal(history.random_free(self.rng), self.name)
        seen, prior = history.observed, self.prior_good(history)
        u = history.utility()[seen]
        order = seen[np.argsort(-u, kind="stable")]
        n_good = min(self.max_good, max(1, math.ceil(self.gamma * len(seen)))) if len(seen) else 0
        good, bad = np.concatenate([order[:n_good], prior]), order[n_good:]
        if len(bad) > self.max_bad:
            bad = self.rng.choice(bad, size=self.max_bad, replace=False)
        free = history.free_indices()
        pool = free if len(free) <= self.max_pool else free[self.rng.choice(len(free), self.max_pool, replace=False)]
        pool = likely_feasible(self.space, history, pool, self.rng)
        log_good = self.log_density(good, pool)
        p = np.exp(log_good - log_good.max())
        p /= p.sum()
        k = min(self.candidates, int(np.count_nonzero(p)))
        drawn = self.rng.choice(len(pool), size=k, replace=False, p=p)
        ratio = log_good[drawn] - (self.log_density(bad, pool[drawn]) if len(bad) else 0.0)
        return Proposal(int(pool[drawn[int(np.argmax(ratio))]]), self.name)
