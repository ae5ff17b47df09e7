"""Summaries of repeated measurements: all samples, median and interquartile range."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def summary(samples: Sequence[float]) -> dict:
    """{samples, median, iqr}; IQR is the 75th minus the 25th percentile (linear interpolation)."""
    values = [float(x) for x in samples]
    if not values:
        raise ValueError("summary() needs at least one sample")
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"samples": values, "median": float(q50), "iqr": float(q75 - q25)}
