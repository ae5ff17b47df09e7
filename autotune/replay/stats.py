"""Paired statistics over seeds: mean ± standard error, and ties with the best.

Replay pairs its runs: seed s of every strategy starts from the same config and meets the
same noise. A strategy is compared with the best (highest mean) on the per-seed
differences, whose standard error is smaller than that of either mean when seeds share
their luck. A difference under TIE_SE standard errors is a tie: it could be noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TIE_SE = 2.0  # a difference under this many standard errors is a tie


def mean_se(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error of the finite values (NaN, 0 when there are none)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not len(x):
        return math.nan, 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def versus_best(per_seed: Mapping[str, Sequence[float | None]]) -> dict[str, dict[str, float | bool | str]]:
    """Per strategy: the best strategy's name, the mean paired difference to it (<= 0),
    its standard error and whether it is a tie (the best ties with itself)."""
    means = {name: mean_se(v)[0] for name, v in per_seed.items()}
    finite = {n: m for n, m in means.items() if math.isfinite(m)}
    if not finite:
        return {}
    best = max(finite, key=finite.get)
    out: dict[str, dict[str, float | bool | str]] = {}
    for name, values in per_seed.items():
        pairs = [(a, b) for a, b in zip(values, per_seed[best])
                 if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
        diff, se = mean_se([a - b for a, b in pairs])
        tie = name == best or (math.isfinite(diff) and abs(diff) < TIE_SE * se)
        out[name] = {"best": best, "diff": diff, "se": se, "tie": bool(tie)}
    return out
