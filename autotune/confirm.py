"""Confirmation: after the search, is the best config really better than the baseline?

The search measured each config once with few repeats, and its best score is the
maximum of many noisy numbers, so it is biased upwards. The top `top_k` feasible
configs that scored above the baseline are measured again, with more repeats, together
with the baseline; per repeat a score is formed (objective.score_samples). The repeats
are split among `processes` benchmark processes per config, run in rounds (baseline,
candidates, baseline, ...): one process's speed can sit apart from another's by more
than its repeats scatter (on an H100, prefill by 10% in the median against a 4% spread
within a process; studies/records/sweep-h100-L4096.md), and a test on the repeats of
a single process would take that for a difference between configs. The
candidate with the highest median is the winner if a one-sided Mann-Whitney U test of
its samples against the baseline's gives p * k < alpha (Bonferroni over the k
candidates, since the winner is picked after looking). Otherwise the baseline stays
the default.

The verdict (a Verdict) is stored as the study user attr 'confirmation' (export reads it):

    {"verdict": "improved" | "baseline",
     "beats_baseline": bool,
     "winner": trial number of the default below,
     "reason": str,
     "default": {"trial": n, "config": {knobs}, "source": "tuned" | "baseline"},
     "p_value": float | None, "p_adjusted": float | None, "alpha": float,
     "repeats": int, "processes": int, "top_k": int, "n_finished": int, "measured_at": ISO time,
     "baseline": {"trial", "config", "ok", "processes", "median", "samples", "process_medians", "metrics", ...},
     "candidates": [{"trial", "config", "search_score", "ok", "processes", "median", "samples", "process_medians",
                     "p_value", "metrics" | "error_kind", "error_message"}, ...]}

`samples` pools the processes' repeats in order, `process_medians` is each process's
median score and `metrics` holds the pooled samples; an entry's `processes` counts the
processes that ran (fewer than the verdict's when the config failed in one).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import mannwhitneyu

from autotune.bench.stats import summary
from autotune.objective import Baseline, recall_of, score_samples
from autotune.spec import ConfirmationSpec, ObjectiveSpec
from autotune.trials import TrialOutcome
from autotune.verdict import plural

ATTR = "confirmation"
# measure(params, repeats) -> outcome; returns None when the user cancelled it.
Measure = Callable[[dict[str, Any], int], "TrialOutcome | None"]


@dataclass
class Verdict:
    """The outcome of a confirmation, stored as the study attr ATTR (`as_attr`)."""

    verdict: str  # "improved" | "baseline"
    default: dict[str, Any]  # {"trial", "config", "source": "tuned" | "baseline"}
    alpha: float
    repeats: int
    processes: int
    top_k: int
    n_finished: int
    measured_at: str
    baseline: dict[str, Any]  # the baseline's entry
    reason: str = ""
    p_value: float | None = None
    p_adjusted: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def beats_baseline(self) -> bool:
        return self.verdict == "improved"

    @property
    def winner(self) -> int:
        return self.default["trial"]

    def as_attr(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "beats_baseline": self.beats_baseline, "winner": self.winner}

    @classmethod
    def from_attr(cls, attr: Any) -> "Verdict | None":
        """A stored verdict; None when there is none or it lacks a field (an older format)."""
        if not isinstance(attr, dict):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        attr = {"processes": 1, **attr}  # verdicts stored before processes existed ran one
        try:
            return cls(**{k: v for k, v in attr.items() if k in names})
        except TypeError:
            return None


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0.0 for v in trial.constraints.values())


def candidates(trials: list[FrozenTrial], baseline_trial: FrozenTrial, top_k: int) -> list[FrozenTrial]:
    """The best `top_k` distinct feasible configs that scored above the baseline."""
    ranked = sorted(
        (
            t for t in trials
            if t.state == TrialState.COMPLETE
            and t.number != baseline_trial.number
            and not t.user_attrs.get("baseline")
            and t.value is not None
            and math.isfinite(t.value)
            and is_feasible(t)
            and baseline_trial.value is not None
            and t.value > baseline_trial.value
            and t.params != baseline_trial.params
        ),
        key=lambda t: (-t.value, t.number),
    )
    picked: list[FrozenTrial] = []
    for trial in ranked:
        if all(trial.params != p.params for p in picked):
            picked.append(trial)
        if len(picked) == top_k:
            break
    return picked


def n_finished(trials: list[FrozenTrial]) -> int:
    return sum(1 for t in trials if t.state.is_finished() and not t.user_attrs.get("stale"))


def is_current(study: optuna.Study, settings: ConfirmationSpec) -> bool:
    """A stored verdict still holds: no trial finished since, same settings."""
    stored = Verdict.from_attr(study.user_attrs.get(ATTR))
    if stored is None:
        return False
    return (
        stored.n_finished == n_finished(study.get_trials(deepcopy=False))
        and stored.repeats == settings.repeats
        and stored.top_k == settings.top_k
        and stored.alpha == settings.alpha
        and stored.processes == settings.processes
    )


def split_repeats(repeats: int, processes: int) -> list[int]:
    """Repeats per process, as even as they go: 8 over 3 processes -> [3, 3, 2]."""
    return [repeats // processes + (p < repeats % processes) for p in range(processes)]


def pooled_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics dict from several processes': timed samples concatenated in process
    order (so repeat r of prefill still pairs with repeat r of decode) and summarised
    again; single values (recall, memory, drift) from the first process."""
    pooled = dict(parts[0])
    for name, value in parts[0].items():
        if isinstance(value, dict) and "samples" in value:
            pooled[name] = summary([x for part in parts for x in (part.get(name) or {}).get("samples", [])])
    return pooled


def _measured(trial: FrozenTrial, outcomes: list[TrialOutcome], baseline: Baseline,
              weights: ObjectiveSpec) -> dict[str, Any]:
    """The entry of one config from its processes' outcomes (the last may have failed)."""
    entry: dict[str, Any] = {"trial": trial.number, "config": dict(trial.params),
                             "ok": all(o.ok for o in outcomes), "processes": len(outcomes),
                             "wall_s": round(sum(o.wall_s for o in outcomes), 3)}
    if trial.value is not None:
        entry["search_score"] = trial.value
    failed = next((o for o in outcomes if not o.ok), None)
    if failed is not None:
        entry.update(error_kind=failed.error_kind, error_message=failed.error_message,
                     stderr_tail=failed.stderr_tail[-2000:])
        return entry
    parts = [o.result.metrics for o in outcomes]
    per_process = [score_samples(m, baseline, weights) for m in parts]
    samples = [x for scores in per_process for x in scores]
    entry.update(metrics=pooled_metrics(parts), samples=samples, median=_median(samples),
                 process_medians=[_median(scores) for scores in per_process], recall=recall_of(parts[0]))
    if not all(per_process):
        entry.update(ok=False, error_kind="invalid_result", error_message="a result has no timed samples")
    return entry


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _store(study: optuna.Study, verdict: Verdict) -> Verdict:
    study.set_user_attr(ATTR, verdict.as_attr())
    return verdict


def confirm(
    study: optuna.Study,
    *,
    baseline_trial: FrozenTrial,
    baseline: Baseline,
    weights: ObjectiveSpec,
    settings: ConfirmationSpec,
    measure: Measure,
    log: Callable[[str], None] = print,
) -> Verdict | None:
    """Re-measure, decide, store and return the verdict; None if cancelled (nothing
    stored)."""
    trials = study.get_trials(deepcopy=False)
    picked = candidates(trials, baseline_trial, settings.top_k)
    verdict = Verdict(
        verdict="baseline",
        default={"trial": baseline_trial.number, "config": dict(baseline_trial.params), "source": "baseline"},
        alpha=settings.alpha,
        repeats=settings.repeats,
        processes=settings.processes,
        top_k=settings.top_k,
        n_finished=n_finished(trials),
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        baseline={"trial": baseline_trial.number, "config": dict(baseline_trial.params)},
    )
    if not picked:
        verdict.reason = "no feasible config scored above the baseline in the search"
        return _store(study, verdict)

    log(f"confirming: baseline and {plural(len(picked), 'config')} with {settings.repeats} repeats each "
        f"in {plural(settings.processes, 'process', 'processes')}")
    measured = [baseline_trial, *picked]
    outcomes: list[list[TrialOutcome]] = [[] for _ in measured]
    for repeats in split_repeats(settings.repeats, settings.processes):
        for trial, done in zip(measured, outcomes):
            if done and not done[-1].ok:
                continue  # a config that failed once is not measured again
            outcome = measure(dict(trial.params), repeats)
            if outcome is None:
                return None
            done.append(outcome)
    base_entry, *cand_entries = (_measured(t, o, baseline, weights) for t, o in zip(measured, outcomes))
    verdict.baseline = base_entry
    verdict.candidates = cand_entries

    if not base_entry["ok"]:
        verdict.reason = f"the baseline failed when measured again ({base_entry.get('error_kind')}); it stays the default"
        return _store(study, verdict)
    floor = weights.recall_floor
    usable = [c for c in verdict.candidates if c["ok"] and c["recall"] >= floor]
    if not usable:
        verdict.reason = "every candidate failed or fell below the recall floor when measured again"
        return _store(study, verdict)
    for cand in usable:
        cand["p_value"] = float(
            mannwhitneyu(cand["samples"], base_entry["samples"], alternative="greater").pvalue
        )
    winner = max(usable, key=lambda c: (c["median"], -c["p_value"]))
    p_adjusted = min(1.0, winner["p_value"] * len(picked))
    verdict.p_value, verdict.p_adjusted = winner["p_value"], p_adjusted
    gain = winner["median"] / base_entry["median"] - 1.0 if base_entry["median"] else float("nan")
    if p_adjusted < settings.alpha and winner["median"] > base_entry["median"]:
        verdict.verdict = "improved"
        verdict.default = {"trial": winner["trial"], "config": winner["config"], "source": "tuned"}
        verdict.reason = (
            f"trial {winner['trial']} beats the baseline by {gain:+.1%} in median score "
            f"(Mann-Whitney p = {winner['p_value']:.3g}, x{len(picked)} = {p_adjusted:.3g} < {settings.alpha})"
        )
    else:
        verdict.reason = (
            f"the best re-measured config (trial {winner['trial']}, {gain:+.1%} in median score) is not "
            f"better beyond noise (Mann-Whitney p = {winner['p_value']:.3g}, x{len(picked)} = "
            f"{p_adjusted:.3g} >= {settings.alpha}); the baseline stays the default"
        )
    return _store(study, verdict)
