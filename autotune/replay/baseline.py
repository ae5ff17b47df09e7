"""The random-search baseline, computed exactly.

Random search draws configs uniformly without replacement. With the N values sorted
best first (b_1 .. b_N), the best of M draws is b_k when the best-ranked draw is k:

    P(best rank >= k) = C(N - k + 1, M) / C(N, M)
    E[best of M]      = sum_k b_k * (P(best rank >= k) - P(best rank >= k + 1))

evaluated in log space, so it is exact to float rounding for any N.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def expected_best_of_draws(values: np.ndarray, draws: int | np.ndarray, maximize: bool) -> np.ndarray:
    """Expected best of M draws without replacement, for each M in `draws` (1 <= M <= N)."""
    vals = np.sort(np.asarray(values, dtype=np.float64))
    if maximize:
        vals = vals[::-1]  # best first
    n = len(vals)
    ms = np.atleast_1d(np.asarray(draws, dtype=np.int64))
    if n == 0 or ms.min() < 1 or ms.max() > n:
        raise ValueError(f"draws must lie in [1, {n}], got {ms.min()}..{ms.max()}")
    k = np.arange(1, n + 2)  # ranks 1..N+1 (N+1: the empty tail)
    out = np.empty(len(ms))
    for j, m in enumerate(ms):
        remaining = n - k + 1  # configs ranked k or worse
        log_tail = np.full(len(k), -np.inf)
        ok = remaining >= m
        log_tail[ok] = (gammaln(remaining[ok] + 1) - gammaln(remaining[ok] - m + 1)
                        - gammaln(n + 1) + gammaln(n - m + 1))
        tail = np.exp(log_tail)  # P(best rank >= k)
        out[j] = float(np.dot(vals, tail[:-1] - tail[1:]))
    return out


def random_curve(values: np.ndarray, horizon: int, maximize: bool) -> np.ndarray:
    """S_rand(t) for t = 1..horizon (capped at N: beyond it random search has seen all)."""
    n = len(values)
    ts = np.arange(1, horizon + 1)
    curve = expected_best_of_draws(values, np.minimum(ts, n), maximize)
    return curve


def budget_for(values: np.ndarray, maximize: bool, fraction: float = 0.05) -> tuple[int, float]:
    """Evaluations random search needs to reach optimum + fraction * (median - optimum).

    Returns (budget, cutoff value). Following Willemsen et al. (FGCS 2024), this is the
    budget within which strategies are compared.
    """
    vals = np.asarray(values, dtype=np.float64)
    optimum = float(vals.max() if maximize else vals.min())
    cutoff = optimum + fraction * (float(np.median(vals)) - optimum)
    sign = 1.0 if maximize else -1.0
    lo, hi = 1, len(vals)
    # S_rand improves monotonically with M: bisect for the first M at or past the cutoff
    while lo < hi:
        mid = (lo + hi) // 2
        if sign * expected_best_of_draws(vals, mid, maximize)[0] >= sign * cutoff - 1e-12 * abs(cutoff):
            hi = mid
        else:
            lo = mid + 1
    return lo, cutoff
