"""Replay: drive a sampler through Optuna ask/tell against a recorded surface, on the
search loop that `tune` and `sweep` use (autotune.loop): the run is a ReplaySearch
(autotune.replay.search), its measurements SurfaceDraws (autotune.evaluators.surface).

The evaluation model: a first visit to a valid config costs one evaluation and returns
one of its recorded samples drawn at random (a failing config returns a FAIL trial); a
revisit returns what the first visit returned and is free; a config outside the valid
set is told as FAIL, is free and counted apart. A run ends after `max_evals`
evaluations, when the sampler reports the space exhausted, or after
`max_proposals` asks (a sampler that only repeats itself spends no evaluations).

What is replayed is exactly the sampler the tuner uses: the same class, an in-memory
study, the same ask/suggest/tell calls. Runs are paired across strategies: a seed fixes
the first config (enqueued, as the tuner's first trial is the baseline) and the noise
stream, so strategies differ only in what they choose. `kt:NAME` runs Kernel Tuner's
strategy NAME instead (autotune.replay.peers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from autotune.errors import UserError
from autotune.evaluators.surface import SurfaceDraws
from autotune.loop import SearchLoop
from autotune.replay.baseline import budget_for, random_curve
from autotune.replay.peers import PeerUnavailable, is_peer, kt_first_visits, kt_strategies, require_kernel_tuner
from autotune.replay.scoring import REACH_AT
from autotune.replay.search import ReplaySearch
from autotune.replay.surface import Surface
from autotune.strategies import STRATEGY_NAMES, make_sampler
from autotune.warm_start import seed_study
from autotune.workers import Slot

# torch is imported only to give Optuna's GP sampler one thread: replay itself never needs it.

OPTUNA_SAMPLERS = ("tpe", "gp", "nsga2")
ALL_STRATEGIES = (*STRATEGY_NAMES, *OPTUNA_SAMPLERS)
# Optuna's GP costs 100-170 ms a proposal: a default replay of a large surface leaves it out
DEFAULT_STRATEGIES = tuple(n for n in ALL_STRATEGIES if n != "gp")
NOISE_STREAM = 0x5EED  # the noise draws use their own stream, apart from the sampler's
START_STREAM = 0x57A7  # the first config of a seed's runs, the same for every strategy


def build_sampler(name: str, surface: Surface, seed: int,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> optuna.samplers.BaseSampler:
    if name in STRATEGY_NAMES:
        return make_sampler(name, surface.space, seed=seed, options=options)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(ALL_STRATEGIES)}")


def parse_strategies(text: str, option: str = "--strategies") -> list[str]:
    """The strategy names of a comma-separated list, each checked (one UserError names every bad one)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    peers = [n for n in names if is_peer(n)]
    if peers:
        try:
            require_kernel_tuner()
        except PeerUnavailable as exc:
            raise UserError(f"{', '.join(peers)}: {exc}") from None
        unknown_peers = [n for n in peers if n.removeprefix("kt:") not in kt_strategies()]
        if unknown_peers:
            raise UserError(f"unknown Kernel Tuner strategy {', '.join(unknown_peers)}; "
                            f"Kernel Tuner has kt:{', kt:'.join(kt_strategies())}")
    unknown = [n for n in names if n not in ALL_STRATEGIES and not is_peer(n)]
    if unknown or not names:
        raise UserError(f"unknown strategy {', '.join(unknown) or '(none given)'}; "
                        f"{option} takes a comma-separated list of {', '.join(ALL_STRATEGIES)} "
                        "and kt:NAME (Kernel Tuner's strategies)")
    return list(dict.fromkeys(names))


@dataclass
class RunTrace:
    strategy: str
    seed: int
    best: np.ndarray  # F(t): true value of the best config evaluated, t = 1..evaluations
    proposed_by: list[str]  # per evaluation: the user attr 'strategy' (or the sampler name)
    proposals: int = 0
    invalid: int = 0
    revisits: int = 0
    exhausted: bool = False
    proposal_s: list[float] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return len(self.best)

    @property
    def ms_per_proposal(self) -> float:
        return 1000.0 * float(np.mean(self.proposal_s)) if self.proposal_s else float("nan")


def replay_run(surface: Surface, strategy: str, seed: int, max_evals: int, *,
               max_proposals: int | None = None, stall_limit: int = 50,
               options: Mapping[str, Mapping[str, Any]] | None = None,
               sampler_factory: Callable[[], optuna.samplers.BaseSampler] | None = None,
               start: bool = True, warm_start: Sequence[Mapping[str, Any]] | None = None) -> RunTrace:
    """One seeded run of `strategy` on `surface` (deterministic for a given seed).

    A config that fails when run is told as a FAIL trial to this project's strategies,
    exactly as the tuner does. Optuna's samplers ignore FAIL trials and would propose
    the same config forever, so they are told the surface's worst value instead (the
    usual way to run them where configs can fail); the same goes for the invalid
    configs only they can propose. The run also stops after `stall_limit` asks in a
    row that spent no evaluation. With `start`, the first trial is the seed's start
    config (start_index), enqueued; its evaluation is labelled 'start'. `warm_start`, a
    ranking of configs (best first, e.g. another surface's), seeds the study as the tuner
    does (autotune.warm_start.seed_study): its best configs are measured next, labelled
    'warm start', and the ranking is the strategies' prior.
    """
    max_evals = min(max_evals, len(surface))
    if is_peer(strategy):
        return _peer_run(surface, strategy, seed, max_evals)
    max_proposals = max_proposals if max_proposals is not None else 10 * max_evals + 50
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per replayed study and trial is noise
    sampler = sampler_factory() if sampler_factory else build_sampler(strategy, surface, seed, options)
    study = optuna.create_study(direction=surface.direction, sampler=sampler)
    if start:
        study.enqueue_trial(dict(surface.space.configs[start_index(surface, seed)]))
    seeded = len(seed_study(study, warm_start, space=surface.space)) if warm_start else 0
    search = ReplaySearch(study, surface, strategy, max_evals=max_evals, max_proposals=max_proposals,
                          stall_limit=stall_limit, start=start, seeded=seeded)
    draws = SurfaceDraws(surface.samples, np.random.default_rng([seed, NOISE_STREAM]), surface.objective)
    SearchLoop(search, [(Slot(), draws)]).run()
    return RunTrace(strategy, seed, np.asarray(search.best), search.proposed_by, proposals=search.proposals,
                    invalid=search.invalid, revisits=search.revisits, exhausted=search.exhausted,
                    proposal_s=search.proposal_s)


def start_index(surface: Surface, seed: int) -> int:
    """The config every strategy's run of `seed` begins with (uniform over the surface)."""
    return int(np.random.default_rng([seed, START_STREAM]).integers(len(surface)))


def _peer_run(surface: Surface, strategy: str, seed: int, max_evals: int) -> RunTrace:
    """A Kernel Tuner strategy's run as a trace: its first visits in order, one evaluation each."""
    order, wall = kt_first_visits(surface, strategy.removeprefix("kt:"), seed, max_evals)
    filled = surface.filled_values()
    best = filled[order]
    best = np.maximum.accumulate(best) if surface.maximize else np.minimum.accumulate(best)
    trace = RunTrace(strategy, seed, np.asarray(best, dtype=np.float64), [strategy] * len(order),
                     proposals=len(order))
    trace.proposal_s = [wall / max(1, len(order))] * len(order)
    return trace


@dataclass
class Comparison:
    """Every strategy's runs on one surface, with the exact random baseline."""

    surface: Surface
    budget: int
    cutoff: float
    horizon: int
    random_curve: np.ndarray  # S_rand(t), t = 1..horizon
    traces: dict[str, list[RunTrace]]
    seeds: list[int]


def default_horizon(surface: Surface, budget: int) -> int:
    """Evaluations per run: the budget, and at least the largest reach point, at most N."""
    return min(len(surface), max(budget, max(REACH_AT)))


def run_comparison(surface: Surface, strategies: Sequence[str], seeds: Sequence[int], *,
                   horizon: int | None = None,
                   options: Mapping[str, Mapping[str, Any]] | None = None,
                   progress: Callable[[str, int, RunTrace], None] | None = None,
                   warm_start: Sequence[Mapping[str, Any]] | None = None) -> Comparison:
    """Replay each strategy once per seed; seeds are shared so strategies meet the same noise."""
    values = surface.filled_values()
    budget, cutoff = budget_for(values, surface.maximize)
    horizon = horizon or default_horizon(surface, budget)
    horizon = max(horizon, budget)
    curve = random_curve(values, horizon, surface.maximize)
    _quiet_optuna(torch_threads="gp" in strategies)
    traces: dict[str, list[RunTrace]] = {}
    for name in strategies:
        traces[name] = []
        for seed in seeds:
            trace = replay_run(surface, name, seed, horizon, options=options,
                               warm_start=None if is_peer(name) else warm_start)
            traces[name].append(trace)
            if progress:
                progress(name, seed, trace)
    return Comparison(surface, budget, cutoff, horizon, curve, traces, list(seeds))


def _quiet_optuna(torch_threads: bool) -> None:
    """Replay asks thousands of trials: Optuna's per-trial log lines are turned down, and
    the GP runs torch on one thread (several fight each other on a small CPU and make
    a proposal ten times slower)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not torch_threads:
        return
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the GP sampler is the only user of torch here
        pass
