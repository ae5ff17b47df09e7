"""Scores of replayed runs against the exact random baseline (Willemsen et al., FGCS 2024).

F(t) is the true value of the best config a run has evaluated after t evaluations
(failures count as the worst value). At each t within the budget

    P(t) = (S_rand(t) - F(t)) / (S_rand(t) - optimum)

which is 0 for random search in expectation and 1 at the optimum (negative: worse than
random); a run's P-score is the mean of P(t) over t = 1..budget.
"""

from __future__ import annotations

import numpy as np

REACH_AT = (10, 25, 50, 100)
REACH_WITHIN = (0.05, 0.01)


def extend(curve: np.ndarray, length: int, empty: float | None = None) -> np.ndarray:
    """A best-so-far curve continued flat to `length` (a run that stopped early keeps its
    best). A run that evaluated nothing (every ask invalid, say) found nothing: it holds
    `empty`, the surface's worst value, as a failure does."""
    curve = np.asarray(curve, dtype=np.float64)
    if len(curve) >= length:
        return curve[:length]
    if not len(curve):
        if empty is None:
            raise ValueError("a run without any evaluation needs a value to hold (the surface's worst)")
        return np.full(length, float(empty))
    return np.concatenate([curve, np.full(length - len(curve), curve[-1])])


def p_score(curve: np.ndarray, random_curve: np.ndarray, optimum: float, budget: int) -> float:
    """Mean P(t) over t = 1..budget; t where random search already sits at the optimum are
    skipped (nothing is left to beat)."""
    f = extend(curve, budget)
    s = np.asarray(random_curve[:budget], dtype=np.float64)
    denom = s - optimum
    ok = np.abs(denom) > 1e-12 * max(1.0, abs(optimum))
    if not ok.any():
        return float("nan")
    return float(np.mean((s[ok] - f[ok]) / denom[ok]))


def within(value: np.ndarray, optimum: float, fraction: float) -> np.ndarray:
    """Whether values lie within `fraction` of the optimum (relative to its magnitude)."""
    return np.abs(np.asarray(value) - optimum) <= fraction * abs(optimum) + 1e-15


def reach_fractions(curves: list[np.ndarray], optimum: float) -> dict[str, dict[str, float]]:
    """Per tolerance and evaluation count, the fraction of runs within tolerance of the optimum."""
    out: dict[str, dict[str, float]] = {}
    for frac in REACH_WITHIN:
        key = f"within_{round(frac * 100)}pct"
        out[key] = {}
        for t in REACH_AT:
            at_t = np.array([extend(c, t)[t - 1] for c in curves])
            out[key][str(t)] = float(np.mean(within(at_t, optimum, frac)))
    return out


def evaluations_to_within(curve: np.ndarray, optimum: float, fraction: float = 0.05) -> int | None:
    """Evaluations a run needed to come within `fraction` of the optimum (None: never)."""
    hit = np.flatnonzero(within(np.asarray(curve), optimum, fraction))
    return int(hit[0]) + 1 if len(hit) else None
