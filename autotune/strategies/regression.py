"""Regression: Bayesian linear model of utility over knob values and value pairs.

Each config is described by one indicator per knob value and one per pair of values of
two knobs (the interactions, e.g. block size x tile size of a kernel). Utility (0..1,
failures 0) is modelled as the sum of their weights, with Gaussian priors that shrink
interactions harder than single values, so the model starts additive and learns an
interaction once the data ask for it. A proposal draws one set of weights from the
posterior (Thompson sampling) and takes the free config with the highest predicted
utility: exploring where the model is unsure, exploiting where it is not.

Cost per proposal: the normal equations are kept incrementally (each observed config
adds its indicators once); solving them is one Cholesky factorisation of a D x D
matrix, D the number of indicators (a few hundred on the shipped spaces). Spaces whose
pair indicators would exceed `max_features` fall back to values only.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.linalg import solve_triangular

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


def indicator_columns(space: DiscreteSpace, pairs: bool, max_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per config, the indices of its active indicators, and per indicator whether it is
    a pair (True) or a single value (False)."""
    cols, is_pair, offset = [], [], 0
    for k in range(len(space.knob_names)):
        cols.append(offset + space.coords[:, k])
        is_pair.append(np.zeros(int(space.sizes[k]), dtype=bool))
        offset += int(space.sizes[k])
    n_pair = sum(int(space.sizes[a]) * int(space.sizes[b])
                 for a, b in itertools.combinations(range(len(space.knob_names)), 2))
    if pairs and offset + n_pair <= max_features:
        for a, b in itertools.combinations(range(len(space.knob_names)), 2):
            if space.sizes[a] == 1 or space.sizes[b] == 1:
                continue  # a constant knob adds nothing to a pair
            cols.append(offset + space.coords[:, a] * int(space.sizes[b]) + space.coords[:, b])
            is_pair.append(np.ones(int(space.sizes[a] * space.sizes[b]), dtype=bool))
            offset += int(space.sizes[a] * space.sizes[b])
    return np.stack(cols, axis=1).astype(np.int64), np.concatenate(is_pair)


class RegressionStrategy(Strategy):
    name = "regression"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, prior_single: float = 0.1,
                 prior_pair: float = 0.03, noise: float = 0.05, exploration: float = 0.3, pairs: bool = False,
                 max_features: int = 2000):
        super().__init__(space, rng)
        self.columns, is_pair = indicator_columns(space, pairs, max_features)
        self.n_features = len(is_pair)
        # prior precision relative to the noise: ridge penalty per indicator
        self.penalty = noise / np.where(is_pair, prior_pair, prior_single)
        self.noise = noise
        self.exploration = exploration
        self._gram = np.zeros((self.n_features, self.n_features))
        self._folded = np.zeros(len(space), dtype=bool)

    def _fold(self, observed: np.ndarray) -> None:
        """Add the indicator outer products of configs observed since the last call."""
        new = observed[~self._folded[observed]]
        if not len(new):
            return
        rows = np.zeros((len(new), self.n_features))
        np.put_along_axis(rows, self.columns[new], 1.0, axis=1)
        self._gram += rows.T @ rows
        self._folded[new] = True

    def sample_weights(self, history: History) -> tuple[np.ndarray, float]:
        """One posterior draw of the indicator weights, and the mean utility they add to."""
        seen = history.observed
        if not len(seen):
            return np.zeros(self.n_features), 0.5
        self._fold(seen)
        u = history.utility()[seen]
        mean_u = float(u.mean())
        xty = np.bincount(self.columns[seen].ravel(), weights=np.repeat(u - mean_u, self.columns.shape[1]),
                          minlength=self.n_features)
        precision = self._gram + np.diag(self.penalty)
        chol = np.linalg.cholesky(precision)
        mean = solve_triangular(chol, solve_triangular(chol, xty, lower=True), lower=True, trans="T")
        z = self.rng.standard_normal(self.n_features)
        # posterior covariance is noise * precision^-1: chol^-T z has covariance precision^-1
        draw = mean + self.exploration * np.sqrt(self.noise) * solve_triangular(chol, z, lower=True, trans="T")
        return draw, mean_u

    def propose(self, history: History) -> Proposal:
        weights, _ = self.sample_weights(history)
        free = history.free_indices()
        pred = weights[self.columns[free]].sum(axis=1)
        best = np.flatnonzero(pred >= pred.max() - 1e-12)
        return Proposal(int(free[best[self.rng.integers(len(best))]]), self.name)
