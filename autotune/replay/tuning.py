"""Tune the strategies' own hyperparameters in replay, on training surfaces only.

    python -m autotune.replay.tuning [--seeds 15] [--rounds 2] [--out FILE.json]
    python -m autotune.replay.tuning --variants '{"name": ["portfolio", {"portfolio": {"warmup": 3}}]}' \
        [--surfaces train|small] [--seeds 100]

Coordinate search: for each strategy, one hyperparameter at a time is set to each value
of its grid while the others stay at their best so far; a change is kept when it raises
the mean P-score over the training surfaces (a P-score only looks at the first
`budget` evaluations, so runs stop there). The members are tuned alone, then the
portfolio's own knobs with the tuned members. `--variants` instead scores named
(strategy, options) pairs once each and prints the mean and per-surface P-scores.

Training surfaces (reports use others: recorded sweeps, Kernel Tuner caches, held-out
generator seeds): "train", seeds 0-3 of both generators in autotune.replay.synthetic
(440 and 2240 configs); "small", the xlstm model at seeds 0-3 over the 18-config space
of the CPU sweeps (4 heads, 2 repeats), for what a budget of about ten evaluations asks;
"cuda", the xlstm model at seeds 0-3 over the 100-config space of studies/cuda.toml
(8 heads, 2048 tokens, 1 repeat, as the H100 sweeps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.replay.baseline import budget_for, random_curve
from autotune.replay.runner import _quiet_optuna, replay_run
from autotune.replay.scoring import extend, p_score
from autotune.replay.surface import Surface
from autotune.replay.synthetic import kernel_surface, xlstm_surface

TRAIN_SEEDS = (0, 1, 2, 3)
HELD_OUT_SEEDS = (100, 101, 102, 103)
# the value lists of studies/surfaces/cpu-tiny.toml: 18 valid configs with 4 heads
SMALL_VALUES = {"workers": [1, 2, 4], "heads_per_band": [1, 2, 4], "chunk_size": [16, 64], "T_inner": [16, 64]}
# the value lists of studies/cuda.toml (8 heads, 2048 tokens): 100 valid configs
CUDA_VALUES = {"workers": [1, 2, 4, 8], "heads_per_band": [1, 2, 4, 8], "chunk_size": [64, 256, 1024, 2048, 4096],
               "T_inner": [64, 256, 1024, 2048, 4096]}

GRIDS: dict[str, dict[str, list[Any]]] = {
    "genetic": {"population": [4, 6, 8, 12, 16], "tournament": [2, 3, 4], "cxpb": [0.3, 0.5, 0.7, 0.9],
                "indpb": [0.1, 0.2, 0.35, 0.5]},
    "bandit": {"method": ["thompson", "ucb"], "prior": [0.5, 1.0, 2.0, 4.0], "ucb_c": [0.1, 0.25, 0.5, 1.0]},
    "boltzmann": {"power": [1.0, 1.5, 3.0], "length": [0.15, 0.5], "t_start": [0.1, 0.4], "bonus": [0.05]},
    "regression": {"exploration": [0.2, 0.3, 0.5, 1.0], "noise": [0.02, 0.05, 0.2],
                   "prior_single": [0.03, 0.1, 1.0], "pairs": [False, True]},
    "portfolio": {"members": [["boltzmann", "genetic", "bandit", "random"], ["boltzmann", "bandit"],
                              ["boltzmann", "genetic"]],
                  "exploration": [0.1, 0.2, 0.8], "window": [10, 50], "warmup": [3, 8], "credit": ["best"]},
}
MEMBERS = ("genetic", "bandit", "boltzmann", "regression")


def training_surfaces(kind: str = "train") -> list[Surface]:
    if kind == "small":
        return [xlstm_surface(s, num_heads=4, repeats=2, values=SMALL_VALUES) for s in TRAIN_SEEDS]
    if kind == "cuda":
        return [xlstm_surface(s, num_heads=8, context=2048, repeats=1, values=CUDA_VALUES) for s in TRAIN_SEEDS]
    return [xlstm_surface(s) for s in TRAIN_SEEDS] + [kernel_surface(s) for s in TRAIN_SEEDS]


class Evaluator:
    """Mean P-score of a strategy with given options over surfaces and seeds."""

    def __init__(self, surfaces: Sequence[Surface], seeds: Sequence[int]):
        self.surfaces = list(surfaces)
        self.seeds = list(seeds)
        self.prepared = []
        for s in self.surfaces:
            values = s.filled_values()
            budget, _ = budget_for(values, s.maximize)
            self.prepared.append((s, budget, random_curve(values, budget, s.maximize)))

    def __call__(self, strategy: str, options: Mapping[str, Mapping[str, Any]]) -> tuple[float, list[float]]:
        per_surface = []
        for surface, budget, curve in self.prepared:
            scores = [p_score(extend(replay_run(surface, strategy, seed, budget, options=options).best, budget,
                                     surface.worst), curve, surface.optimum, budget) for seed in self.seeds]
            per_surface.append(float(np.mean(scores)))
        return float(np.mean(per_surface)), per_surface


def coordinate_search(evaluate: Evaluator, strategy: str, options: dict[str, dict[str, Any]],
                      grid: Mapping[str, Sequence[Any]], rounds: int, log) -> tuple[dict[str, dict[str, Any]], list]:
    """Improve options[strategy] one knob at a time; returns the options and the trail."""
    options = json.loads(json.dumps(options))
    best, per = evaluate(strategy, options)
    trail = [{"strategy": strategy, "options": json.loads(json.dumps(options.get(strategy, {}))), "p_score": best,
              "per_surface": per}]
    log(f"{strategy}: start {best:.4f} {options.get(strategy, {})}")
    for _ in range(rounds):
        changed = False
        for knob, choices in grid.items():
            for value in choices:
                if options.get(strategy, {}).get(knob) == value:
                    continue
                trial = json.loads(json.dumps(options))
                trial.setdefault(strategy, {})[knob] = value
                score, per = evaluate(strategy, trial)
                trail.append({"strategy": strategy, "options": trial[strategy], "p_score": score, "per_surface": per})
                if score > best + 1e-9:
                    best, options, changed = score, trial, True
                    log(f"{strategy}: {knob}={value!r} -> {best:.4f}")
        if not changed:
            break
    log(f"{strategy}: best {best:.4f} {options.get(strategy, {})}")
    return options, trail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.replay.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60, help="replay seeds per evaluation (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over each grid (default 2)")
    parser.add_argument("--strategies", default=",".join((*MEMBERS, "portfolio")))
    parser.add_argument("--start", default="{}", help="starting options (JSON), e.g. a previous result")
    parser.add_argument("--out", default=None,
                        help="write the search and its trail as JSON here (default: print the result only)")
    parser.add_argument("--surfaces", choices=("train", "small", "cuda"), default="train",
                        help="training set (default train)")
    parser.add_argument("--variants", default=None,
                        help='score named variants instead of searching: JSON {"name": [strategy, options]}')
    args = parser.parse_args(argv)
    _quiet_optuna(torch_threads=False)
    started = time.monotonic()
    log = lambda line: print(f"[{time.monotonic() - started:6.0f} s] {line}", file=sys.stderr, flush=True)  # noqa: E731
    evaluate = Evaluator(training_surfaces(args.surfaces), range(args.seeds))
    if args.variants:
        for label, (strategy, options) in json.loads(args.variants).items():
            mean, per = evaluate(strategy, options)
            print(f"{label:<16} {mean:.3f}  " + " ".join(f"{x:.2f}" for x in per), flush=True)
        return 0
    options: dict[str, dict[str, Any]] = json.loads(args.start)
    trail = []
    for strategy in args.strategies.split(","):
        options, steps = coordinate_search(evaluate, strategy, options, GRIDS[strategy], args.rounds, log)
        trail.extend(steps)
    record = {
        "what": "coordinate search of strategy hyperparameters on training surfaces (mean P-score)",
        "training_surfaces": [s.name for s in evaluate.surfaces],
        "seeds": args.seeds,
        "rounds": args.rounds,
        "grids": GRIDS,
        "result": options,
        "trail": trail,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
