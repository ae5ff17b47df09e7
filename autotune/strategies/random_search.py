"""Random search: uniform over the configs no trial holds (without replacement)."""

from __future__ import annotations

from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


class RandomStrategy(Strategy):
    name = "random"

    def propose(self, history: History) -> Proposal:
        return Proposal(history.random_free(self.rng), self.name)
