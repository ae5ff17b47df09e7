"""Feasibility: failures as a region to learn, not isolated bad points.

Configs that fail to compile or run cluster (too many registers, too much shared memory,
a tile that does not divide): a config near many observed failures probably fails too.
The estimate is a kernel regression of "failed" over the observed configs, by L1
distance in the space's unit coordinates (weight exp(-distance / length)), shrunk
towards the study's failure rate with weight `prior_weight`.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from autotune.space import DiscreteSpace
from autotune.strategies.history import History

FAIL_LIMIT = 0.5  # candidates predicted to fail more often than this are avoided


def failure_probability(space: DiscreteSpace, history: History, candidates: np.ndarray, *,
                        length: float = 0.25, prior_weight: float = 0.5, max_reference: int = 300,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Per candidate config index, the estimated probability that it fails."""
    seen = history.observed
    if not len(seen) or not history.failed[seen].any():
        return np.zeros(len(candidates))
    if len(seen) > max_reference and rng is not None:  # bounded cost on long studies
        seen = rng.choice(seen, size=max_reference, replace=False)
    failed = history.failed[seen].astype(np.float64)
    rate = float(history.failed[history.observed].mean())
    unit = space.unit_coords()
    w = np.exp(-cdist(unit[candidates], unit[seen], "cityblock") / length)
    return (w @ failed + prior_weight * rate) / (w.sum(axis=1) + prior_weight)


def likely_feasible(space: DiscreteSpace, history: History, candidates: np.ndarray,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The candidates not predicted to fail (all of them when every one is)."""
    p = failure_probability(space, history, candidates, rng=rng)
    keep = candidates[p <= FAIL_LIMIT]
    return keep if len(keep) else candidates
