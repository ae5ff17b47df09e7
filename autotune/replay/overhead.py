"""Proposal overhead of the strategies at many trials.

    python -m autotune.replay.overhead [--trials 1000] [--storage memory|sqlite] [--surface synthetic:kernel:100]

Drives each strategy's sampler through ask/suggest/tell against a surface's true values
(no noise needed) and reports the sampler's own time per proposal (sample_relative:
reading the new trials, choosing, writing the 'strategy' attr) and the whole trial's
time, both in ms. The surface must have at least `--trials` configs.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from autotune.replay.loading import load_surface
from autotune.strategies import STRATEGY_NAMES, make_sampler


def measure(surface, name: str, trials: int, storage: str | None) -> dict[str, float]:
    space = surface.space
    sampler = make_sampler(name, space, seed=0)
    spent: list[float] = []
    inner = sampler.sample_relative

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    sampler.sample_relative = timed  # type: ignore[method-assign]
    study = optuna.create_study(direction=surface.direction, sampler=sampler, storage=storage)
    dists = space.distributions()
    totals = []
    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        value = surface.true_values[space.index({k: trial.suggest_categorical(k, dists[k].choices) for k in space.knob_names})]
        if math.isnan(value):
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(value))
        totals.append(time.perf_counter() - start)
    s, t = 1000 * np.asarray(spent), 1000 * np.asarray(totals)
    return {"sampler_ms_mean": round(float(s.mean()), 2), "sampler_ms_last100": round(float(s[-100:].mean()), 2),
            "sampler_ms_max": round(float(s.max()), 2), "trial_ms_last100": round(float(t[-100:].mean()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.replay.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--surface", default="synthetic:kernel:100")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    surface = load_surface(args.surface)
    if len(surface) < args.trials:
        parser.error(f"{surface.name} has {len(surface)} configs, fewer than --trials {args.trials}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.strategies.split(","):
            storage = f"sqlite:///{Path(tmp) / (name + '.db')}" if args.storage == "sqlite" else None
            results[name] = measure(surface, name, args.trials, storage)
            print(name, json.dumps(results[name]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
