"""Search strategies, each an Optuna sampler over the valid configs of a space.

    sampler = make_sampler("portfolio", space, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)

Every trial then suggests each knob with `trial.suggest_categorical(knob,
space.values[knob])` in `space.knob_names` order and gets a config no trial of the
study holds yet; the user attr 'strategy' names who proposed it. When nothing is left,
the suggestion raises `SpaceExhausted` (check `sampler.remaining(study)` first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.bandit import BanditStrategy
from autotune.strategies.base import STRATEGY_ATTR, Proposal, SpaceExhausted, Strategy, StrategySampler
from autotune.strategies.boltzmann import BoltzmannStrategy
from autotune.strategies.genetic import GeneticStrategy
from autotune.strategies.history import History
from autotune.strategies.local import LocalStrategy
from autotune.strategies.parzen import ParzenStrategy
from autotune.strategies.portfolio import PortfolioStrategy
from autotune.strategies.random_search import RandomStrategy
from autotune.strategies.regression import RegressionStrategy

DEFAULT_STRATEGY = "portfolio"
# The default portfolio, chosen leave-one-family-out on real surfaces (docs/strategies.md,
# studies/records/replay-heldout.md): the meta-bandit's choices after the warm-up
PORTFOLIO_MEMBERS = ("boltzmann", "bandit", "parzen", "regression")
PORTFOLIO_PRIOR: dict[str, float] = {}  # no initial credit: each member proposes once, then credit decides
PORTFOLIO_WARMUP = "bandit"  # proposes the first trials (the warm-up)
PORTFOLIO_WARMUP_TRIALS = 8
# the warm-up shrinks in proportion on spaces larger than this (3 at 2240 configs); None: never
PORTFOLIO_WARMUP_SPACE: int | None = 800

_SINGLE: dict[str, Callable[..., Strategy]] = {
    "random": RandomStrategy,
    "genetic": GeneticStrategy,
    "bandit": BanditStrategy,
    "boltzmann": BoltzmannStrategy,
    "regression": RegressionStrategy,
    "local": LocalStrategy,
    "parzen": ParzenStrategy,
}
STRATEGY_NAMES = (*_SINGLE, "portfolio")


def make_strategy(name: str, space: DiscreteSpace, seed: int | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> Strategy:
    """A bare strategy (no Optuna) seeded from `seed`.

    options: per strategy name, keyword hyperparameters (e.g. {"boltzmann": {"t_start": 0.3}});
    the portfolio passes its members' options on to them.
    """
    options = options or {}
    seq = np.random.SeedSequence(seed)
    if name == "portfolio":
        own = dict(options.get("portfolio", {}))
        pool = tuple(own.pop("members", PORTFOLIO_MEMBERS))
        own.setdefault("warmup_member", PORTFOLIO_WARMUP)
        own.setdefault("warmup", PORTFOLIO_WARMUP_TRIALS)
        own.setdefault("lead", None)
        own.setdefault("warmup_space", PORTFOLIO_WARMUP_SPACE)
        # the default prior only for the members a custom pool keeps
        own.setdefault("prior", {m: c for m, c in PORTFOLIO_PRIOR.items() if m in pool})
        names = tuple(dict.fromkeys((*pool, *(m for m in (own["lead"], own["warmup_member"]) if m))))
        unknown = [m for m in names if m not in _SINGLE]
        if unknown:
            raise ValueError(f"unknown portfolio member(s) {unknown}; members are {', '.join(_SINGLE)}")
        member_seeds = seq.spawn(len(names) + 1)
        members = [_SINGLE[m](space, np.random.default_rng(s), **options.get(m, {}))
                   for m, s in zip(names, member_seeds[1:])]
        return PortfolioStrategy(space, np.random.default_rng(member_seeds[0]), members, pool=pool, **own)
    if name not in _SINGLE:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    return _SINGLE[name](space, np.random.default_rng(seq), **options.get(name, {}))


def make_sampler(name: str, space: DiscreteSpace, seed: int | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> StrategySampler:
    """The Optuna sampler for strategy `name` over `space` (see the module docstring)."""
    return StrategySampler(space, make_strategy(name, space, seed, options), seed=seed)


__all__ = [
    "DEFAULT_STRATEGY", "STRATEGY_ATTR", "STRATEGY_NAMES", "PORTFOLIO_MEMBERS", "PORTFOLIO_PRIOR", "PORTFOLIO_WARMUP",
    "PORTFOLIO_WARMUP_SPACE", "PORTFOLIO_WARMUP_TRIALS",
    "BanditStrategy", "BoltzmannStrategy", "GeneticStrategy", "History", "LocalStrategy", "ParzenStrategy",
    "PortfolioStrategy",
    "Proposal", "RandomStrategy", "RegressionStrategy", "SpaceExhausted", "Strategy", "StrategySampler",
    "make_sampler", "make_strategy",
]
