"""Regression: Bayesian linear model of utility over knob values, Thompson sampling.

Each config is described by one indicator per knob value; optionally (pairs=True) one
per pair of values of two knobs (the interactions, e.g. block size x tile size of a
kernel) and (steps=True) one per step along an ordered knob (value >= its j-th value,
so neighbouring values share weight: a smoothness prior). Utility (0..1, failures 0)
is modelled as the sum of the active indicators' weights under Gaussian priors
(prior_single, prior_pair, prior_step) and noise variance `noise`. A proposal draws one
set of weights from the posterior, its spread scaled by `exploration` (Thompson
sampling), and takes the free config with the highest predicted utility: exploring
where the model is unsure, exploiting where it is not.

The defaults (values only, exploration 0.3) were chosen in replay on training
surfaces: pairs and steps cost more exploration than they gained within budgets of
tens of evaluations (studies/records/replay-tuning.json).

Cost per proposal: the normal equations are kept incrementally (each observed config
adds its indicators once); solving them is one Cholesky factorisation of a D x D
matrix, D the number of indicators (26 on the kernel caches with values only, a few
hundred with pairs). Spaces whose pairs would exceed `max_features` get no pairs.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.linalg import solve_triangular

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


SINGLE, PAIR, STEP = 0, 1, 2  # kinds of indicator


def indicator_columns(space: DiscreteSpace, pairs: bool, steps: bool,
                      max_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per config, the indices of its active indicators (padded with the index D, one
    past the last indicator), and per indicator its kind: SINGLE (knob == value), PAIR
    (two knobs == a pair of values) or STEP (an ordered knob >= its j-th value)."""
    blocks, kinds, offset = [], [], 0
    sizes = [int(n) for n in space.sizes]
    for k, n in enumerate(sizes):
        blocks.append(offset + space.coords[:, k : k + 1])
        kinds.append(np.full(n, SINGLE))
        offset += n
    if steps:
        # neighbouring values of an ordered knob share every step below them: a smoothness prior
        for k, n in enumerate(sizes):
            if space.ordered[k] and n > 2:
                j = np.arange(1, n)
                blocks.append(np.where(space.coords[:, k : k + 1] >= j[None, :], offset + j[None, :] - 1, -1))
                kinds.append(np.full(n - 1, STEP))
                offset += n - 1
    knob_pairs = [(a, b) for a, b in itertools.combinations(range(len(sizes)), 2) if sizes[a] > 1 and sizes[b] > 1]
    if pairs and offset + sum(sizes[a] * sizes[b] for a, b in knob_pairs) <= max_features:
        for a, b in knob_pairs:
            blocks.append(offset + space.coords[:, a : a + 1] * sizes[b] + space.coords[:, b : b + 1])
            kinds.append(np.full(sizes[a] * sizes[b], PAIR))
            offset += sizes[a] * sizes[b]
    cols = np.concatenate(blocks, axis=1).astype(np.int64)
    cols[cols < 0] = offset
    return cols, np.concatenate(kinds)


class RegressionStrategy(Strategy):
    name = "regression"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, prior_single: float = 0.1,
                 prior_pair: float = 0.03, prior_step: float = 0.03, noise: float = 0.05, exploration: float = 0.3,
                 pairs: bool = False, steps: bool = False, max_features: int = 2000):
        super().__init__(space, rng)
        self.columns, kinds = indicator_columns(space, pairs, steps, max_features)
        self.n_features = len(kinds)
        # prior precision relative to the noise: ridge penalty per indicator
        self.penalty = noise / np.array([prior_single, prior_pair, prior_step])[kinds]
        self.noise = noise
        self.exploration = exploration
        self._gram = np.zeros((self.n_features, self.n_features))
        self._folded = np.zeros(len(space), dtype=bool)

    def _fold(self, observed: np.ndarray) -> None:
        """Add the indicator outer products of configs observed since the last call."""
        new = observed[~self._folded[observed]]
        if not len(new):
            return
        rows = np.zeros((len(new), self.n_features + 1))  # the last column takes the padding
        np.put_along_axis(rows, self.columns[new], 1.0, axis=1)
        self._gram += rows[:, :-1].T @ rows[:, :-1]
        self._folded[new] = True

    def sample_weights(self, history: History) -> np.ndarray:
        """One posterior draw of the indicator weights (of utility about its mean)."""
        seen = history.observed
        if not len(seen):
            return np.zeros(self.n_features)
        self._fold(seen)
        u = history.utility()[seen]
        mean_u = float(u.mean())
        xty = np.bincount(self.columns[seen].ravel(), weights=np.repeat(u - mean_u, self.columns.shape[1]),
                          minlength=self.n_features + 1)[:-1]
        precision = self._gram + np.diag(self.penalty)
        chol = np.linalg.cholesky(precision)
        mean = solve_triangular(chol, solve_triangular(chol, xty, lower=True), lower=True, trans="T")
        z = self.rng.standard_normal(self.n_features)
        # posterior covariance is noise * precision^-1: chol^-T z has covariance precision^-1
        draw = mean + self.exploration * np.sqrt(self.noise) * solve_triangular(chol, z, lower=True, trans="T")
        return draw

    def propose(self, history: History) -> Proposal:
        weights = self.sample_weights(history)
        free = history.free_indices()
        pred = np.append(weights, 0.0)[self.columns[free]].sum(axis=1)
        best = np.flatnonzero(pred >= pred.max() - 1e-12)
        return Proposal(int(free[best[self.rng.integers(len(best))]]), self.name)
