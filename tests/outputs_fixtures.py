"""Optuna stores laid out as `autotune tune` writes them (brief-contracts: study name,
study and trial user attrs, the recall constraint), built directly with optuna so the
output commands (best, export, report, dashboard) are tested without running a tuner."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

SPACE = {"workers": [1, 2, 4], "heads_per_band": [1, 2, 4], "chunk_size": [16, 32], "T_inner": [4, 8, 16, 32]}
STRATEGIES = ("genetic", "random", "bandit", "boltzmann")


def metric(median: float) -> dict[str, Any]:
    return {"samples": [median * 0.98, median, median * 1.02], "median": median, "iqr": median * 0.02}


def make_trial(params: dict[str, Any], value: float | None, *, strategy: str, prefill: float = 1000.0,
               decode: float = 100.0, recall: float = 1.0, baseline: bool = False,
               state: TrialState = TrialState.COMPLETE, floor: float = 0.5):
    space = dict(SPACE)
    if "sub_chunk" in params:  # a kernel knob, as [space.kernel] lists it, with windows it can reach
        space.update(chunk_size=[16, 32, 64], T_inner=[4, 8, 16, 32, 64], sub_chunk=[32, 64, 128, 256])
    if "backend" in params:
        space["backend"] = ["queued", "ray"]
    user_attrs: dict[str, Any] = {"strategy": strategy, "config": dict(params), "wall_s": 1.5, "stderr_tail": ""}
    constraints = None
    if state == TrialState.COMPLETE:
        user_attrs["metrics"] = {"prefill_tok_s": metric(prefill), "decode_tok_s": metric(decode),
                                 "recall": recall, "ttft_ms": metric(5.0)}
        constraints = {"recall_floor": floor - recall}
    else:
        user_attrs.update(error_kind="timeout", error_message="the benchmark ran past 60 s")
    if baseline:
        user_attrs["baseline"] = True
    return optuna.trial.create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=params,
        distributions={k: CategoricalDistribution(space[k]) for k in params},
        user_attrs=user_attrs, constraints=constraints,
    )


def add_study(storage, name: str, trials: list, *, confirmation: dict[str, Any] | None = None,
              dtype: str = "float32") -> optuna.Study:
    shape, device_kind, backends, context = name.split("/")[:4]  # (a batch above 1 adds /B<batch>)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("shape", shape)
    study.set_user_attr("dtype", dtype)
    study.set_user_attr("device", device_kind)
    study.set_user_attr("backends", backends.split("+"))
    study.set_user_attr("context", int(context[1:].split("~")[0]))
    study.set_user_attr("fingerprint", {"device_name": "test cpu", "torch": "2.13.0", "project_version": "0.1.0"})
    study.set_user_attr("baseline", {"prefill_tok_s": 1000.0, "decode_tok_s": 100.0})
    if confirmation is not None:
        study.set_user_attr("confirmation", confirmation)
    for trial in trials:
        study.add_trial(trial)
    return study


BASELINE = {"workers": 1, "heads_per_band": 4, "chunk_size": 32, "T_inner": 32}


def searched_trials(context: int, n: int, seed: int, *, best: dict[str, Any], best_value: float) -> list:
    """A baseline, n - 2 varied trials, one FAIL trial and an infeasible high scorer, plus `best`."""
    rng = random.Random(seed)
    chunk = min(32, context)
    base = dict(BASELINE, chunk_size=chunk, T_inner=chunk)
    trials = [make_trial(base, 3.0, strategy="baseline", baseline=True)]
    seen = {tuple(sorted(base.items())), tuple(sorted(best.items()))}
    while len(trials) < n - 2:
        cfg = {k: rng.choice(v) for k, v in SPACE.items()}
        if cfg["chunk_size"] % cfg["T_inner"] or tuple(sorted(cfg.items())) in seen:
            continue
        seen.add(tuple(sorted(cfg.items())))
        speed = 0.6 + 0.1 * cfg["workers"] + 0.05 * rng.random()
        trials.append(make_trial(cfg, 2 * speed + 1.0, strategy=rng.choice(STRATEGIES),
                                 prefill=1000 * speed, decode=100 * speed))
    trials.append(make_trial({"workers": 4, "heads_per_band": 1, "chunk_size": 16, "T_inner": 4}, None,
                             strategy="random", state=TrialState.FAIL))
    # Fastest of all but below the recall floor: never the best.
    trials.append(make_trial({"workers": 4, "heads_per_band": 2, "chunk_size": 32, "T_inner": 8}, best_value + 1.0,
                             strategy="bandit", recall=0.1, prefill=5000, decode=500))
    trials.append(make_trial(best, best_value, strategy="genetic", prefill=1000 * (best_value - 1) / 2,
                             decode=100 * (best_value - 1) / 2))
    return trials


WINNER_64 = {"workers": 2, "heads_per_band": 2, "chunk_size": 32, "T_inner": 16}
WINNER_16 = {"workers": 2, "heads_per_band": 1, "chunk_size": 16, "T_inner": 8}


def confirmation_attr(improved: bool, winner_trial: int, winner: dict[str, Any], baseline) -> dict[str, Any]:
    """A 'confirmation' study attr as autotune/confirm.py writes it; the re-measured
    winner ran at 1.1x its search speed (so tests can tell the two measurements apart)."""
    speed = 1.1 * 1.4
    return {
        "verdict": "improved" if improved else "baseline",
        "reason": "p_adjusted 0.01 < alpha 0.05" if improved else "p_adjusted 0.4 >= alpha 0.05",
        "default": {"trial": winner_trial if improved else baseline.number,
                    "config": winner if improved else baseline.params,
                    "source": "tuned" if improved else "baseline"},
        "p_value": 0.003 if improved else 0.13, "p_adjusted": 0.003 if improved else 0.13,
        "alpha": 0.05, "repeats": 8, "processes": 2, "top_k": 1,
        "baseline": {"trial": baseline.number, "config": baseline.params, "ok": True, "median": 3.0,
                     "metrics": {"prefill_tok_s": metric(1000.0), "decode_tok_s": metric(100.0), "recall": 1.0}},
        "candidates": [{"trial": winner_trial, "config": winner, "ok": True, "median": 3.9 if improved else 3.1,
                        "p_value": 0.003 if improved else 0.13,
                        "metrics": {"prefill_tok_s": metric(1000.0 * speed), "decode_tok_s": metric(100.0 * speed),
                                    "recall": 1.0}}],
    }


def standard_store(directory: Path, *, confirm_64: str | None = "tuned", confirm_16: str | None = "baseline",
                   n: int = 14) -> str:
    """Two contexts of the tiny shape on cpu/queued: L64 with a winner that beat the
    baseline in confirmation, L16 whose winner did not (by default)."""
    url = f"sqlite:///{directory / 'autotune.db'}"
    storage = optuna.storages.RDBStorage(url)
    for context, winner, value, verdict, seed in ((64, WINNER_64, 3.8, confirm_64, 1), (16, WINNER_16, 3.5, confirm_16, 2)):
        trials = searched_trials(context, n, seed, best=winner, best_value=value)
        confirmation = None
        if verdict is not None:
            confirmation = confirmation_attr(verdict == "tuned", len(trials) - 1, winner, trials[0])
        add_study(storage, f"tiny/cpu/queued/L{context}", trials, confirmation=confirmation)
    return url
