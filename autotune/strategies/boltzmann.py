"""Boltzmann: softmax over the free configs with an annealed temperature.

Each free config gets a predicted utility from what has been measured: the mean of its
measured neighbours where it has any, blended with an additive model of per-knob-value
means (shrunk towards 0.5 while a value has few observations). A proposal samples a
config with probability proportional to exp(prediction / T); T falls as trials
accumulate, moving from exploring to exploiting.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from autotune.space import DiscreteSpace
from autotune.strategies.bandit import arm_statistics
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


def predicted_utility(space: DiscreteSpace, history: History, candidates: np.ndarray, u: np.ndarray, *,
                      shrink: float, neighbour_weight: float) -> np.ndarray:
    """Predicted utility in [0, 1] for each candidate config index, from utilities u."""
    seen = history.observed
    prior = float(np.mean(u[seen])) if len(seen) else 0.5
    additive = np.full(len(candidates), prior)
    for k, (sums, counts) in enumerate(arm_statistics(space, history, u)):
        value_mean = (sums + shrink * prior) / (counts + shrink)
        additive += value_mean[space.coords[candidates, k]] - prior
    additive = np.clip(additive, 0.0, 1.0)
    if not len(seen) or neighbour_weight <= 0:
        return additive
    padded = np.append(u, np.nan)  # the neighbour matrix pads with len(space)
    nb = padded[space.neighbour_matrix()[candidates]]
    known = ~np.isnan(nb)
    n_known = known.sum(axis=1)
    nb_mean = np.where(n_known > 0, np.where(known, nb, 0.0).sum(axis=1) / np.maximum(n_known, 1), additive)
    # trust the neighbours more the more of them are known
    w = neighbour_weight * n_known / (n_known + 1.0)
    return (1.0 - w) * additive + w * nb_mean


def kernel_utility(space: DiscreteSpace, history: History, candidates: np.ndarray, u: np.ndarray,
                   fallback: np.ndarray, *, length: float, prior_weight: float, max_reference: int,
                   rng: np.random.Generator, bonus: float = 0.0) -> np.ndarray:
    """Kernel regression of utility over the observed configs: each observed config
    counts with weight exp(-distance / length), the fallback with prior_weight."""
    seen = history.observed
    if not len(seen):
        return fallback
    if len(seen) > max_reference:  # keep the best half, sample the rest: bounded cost
        order = np.argsort(-u[seen], kind="stable")
        keep = order[: max_reference // 2]
        rest = rng.choice(order[max_reference // 2 :], size=max_reference - len(keep), replace=False)
        seen = seen[np.concatenate([keep, rest])]
    unit = space.unit_coords()
    w = np.exp(-cdist(unit[candidates], unit[seen], "cityblock") / length)
    mass = w.sum(axis=1)
    pred = (w @ u[seen] + prior_weight * fallback) / (mass + prior_weight)
    # little weight nearby = little known: the bonus steers exploration to such configs
    return pred + bonus / np.sqrt(1.0 + mass / prior_weight)


class BoltzmannStrategy(Strategy):
    name = "boltzmann"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, t_start: float = 0.1,
                 t_end: float = 0.02, horizon: int = 60, shrink: float = 2.0, neighbour_weight: float = 0.6,
                 model: str = "kernel", length: float = 0.3, prior_weight: float = 0.5,
                 max_reference: int = 200, max_candidates: int = 3000, power: float = 3.0, bonus: float = 0.0):
        super().__init__(space, rng)
        self.t_start, self.t_end, self.horizon = t_start, t_end, horizon
        self.shrink, self.neighbour_weight = shrink, neighbour_weight
        if model not in ("neighbours", "kernel"):
            raise ValueError(f"boltzmann model must be 'neighbours' or 'kernel', got {model!r}")
        self.model, self.length, self.prior_weight = model, length, prior_weight
        self.max_reference, self.max_candidates = max_reference, max_candidates
        self.power = power  # > 1 stresses the difference between good and best results
        self.bonus = bonus

    def temperature(self, n_observed: int) -> float:
        """Geometric annealing from t_start to t_end over `horizon` observations, then flat."""
        progress = min(1.0, n_observed / max(1, self.horizon))
        return self.t_start * (self.t_end / self.t_start) ** progress

    def predict(self, history: History, candidates: np.ndarray) -> np.ndarray:
        """Predicted utility (plus the exploration bonus) of each candidate."""
        u = history.utility() ** self.power
        pred = predicted_utility(self.space, history, candidates, u, shrink=self.shrink,
                                 neighbour_weight=self.neighbour_weight)
        if self.model == "kernel":
            pred = kernel_utility(self.space, history, candidates, u, pred, length=self.length,
                                  prior_weight=self.prior_weight, max_reference=self.max_reference, rng=self.rng,
                                  bonus=self.bonus)
        return pred

    def propose(self, history: History) -> Proposal:
        free = history.free_indices()
        if len(free) > self.max_candidates:  # a random subset keeps a proposal cheap on huge spaces
            free = free[self.rng.choice(len(free), size=self.max_candidates, replace=False)]
        pred = self.predict(history, free)
        temp = self.temperature(len(history.observed))
        logits = (pred - pred.max()) / temp
        p = np.exp(logits)
        p /= p.sum()
        return Proposal(int(free[self.rng.choice(len(free), p=p)]), self.name)
