"""The score of a benchmark result (README, "Tuning").

    score = w_decode * decode / decode_baseline
          + w_prefill * prefill / prefill_baseline
          + w_recall * recall

with the baseline's medians, so 1.0 per speed term means "as fast as the untuned
runtime". A recall below the floor is a violated Optuna constraint
(`recall_floor` = floor - recall, feasible when <= 0), not a lower score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autotune.spec import ObjectiveSpec

CONSTRAINT = "recall_floor"


@dataclass(frozen=True)
class Baseline:
    prefill_tok_s: float
    decode_tok_s: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> "Baseline":
        prefill, decode = median(metrics.get("prefill_tok_s")), median(metrics.get("decode_tok_s"))
        for name, value in (("prefill_tok_s", prefill), ("decode_tok_s", decode)):
            if value is None or not value > 0:
                raise ValueError(f"the baseline's {name} is {value!r}; a score needs a positive baseline speed")
        return cls(prefill, decode)

    def as_dict(self) -> dict[str, float]:
        return {"prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


def median(metric: Any) -> float | None:
    """A metric's median: metrics are {samples, median, iqr} objects or plain numbers."""
    if isinstance(metric, dict):
        metric = metric.get("median")
    if isinstance(metric, (int, float)) and not isinstance(metric, bool) and math.isfinite(metric):
        return float(metric)
    return None


def samples(metric: Any) -> list[float]:
    if isinstance(metric, dict) and isinstance(metric.get("samples"), list):
        return [float(x) for x in metric["samples"] if isinstance(x, (int, float))]
    value = median(metric)
    return [] if value is None else [value]


def recall_of(metrics: dict[str, Any]) -> float:
    """MQAR recall in [0, 1]; a missing recall counts as 0 (and so violates any floor > 0)."""
    value = median(metrics.get("recall"))
    return 0.0 if value is None else value


def _combine(prefill: float, decode: float, recall: float, baseline: Baseline, weights: ObjectiveSpec) -> float:
    return (
        weights.w_decode * decode / baseline.decode_tok_s
        + weights.w_prefill * prefill / baseline.prefill_tok_s
        + weights.w_recall * recall
    )


def score(metrics: dict[str, Any], baseline: Baseline, weights: ObjectiveSpec) -> float:
    """The trial value of a result's metrics; raises ValueError when a speed is missing."""
    prefill, decode = median(metrics.get("prefill_tok_s")), median(metrics.get("decode_tok_s"))
    if prefill is None or decode is None:
        raise ValueError("the result has no prefill_tok_s/decode_tok_s median")
    return _combine(prefill, decode, recall_of(metrics), baseline, weights)


def score_samples(metrics: dict[str, Any], baseline: Baseline, weights: ObjectiveSpec) -> list[float]:
    """One score per timed repeat: repeat r pairs prefill sample r with decode sample r.
    These raw samples are what confirmation compares between configs."""
    prefill, decode = samples(metrics.get("prefill_tok_s")), samples(metrics.get("decode_tok_s"))
    recall = recall_of(metrics)
    return [_combine(p, d, recall, baseline, weights) for p, d in zip(prefill, decode)]


def recall_violation(metrics: dict[str, Any], weights: ObjectiveSpec) -> float:
    """The constraint value: floor - recall (feasible when <= 0)."""
    return weights.recall_floor - recall_of(metrics)
