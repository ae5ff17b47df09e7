"""Portfolio: a meta-bandit that picks which strategy proposes each trial.

Credit follows the area-under-curve bandit of OpenTuner: a strategy's recent uses form
a 0/1 sequence (1 when its trial beat every result finished before it), weighted so
later uses count more; its score is that AUC plus an exploration bonus
c * sqrt(2 ln(uses of all) / uses of it). Everything is read back from the study's
trials and their 'strategy' attr, so credit survives a resume and counts the work of
every worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


def improvement_credits(history: History) -> list[tuple[str | None, float]]:
    """(strategy, credit) per finished trial in order: 1 if it set a new best, else 0."""
    best = -math.inf
    credits = []
    for event in history.events:
        better = event.value is not None and event.value > best
        credits.append((event.strategy, 1.0 if better else 0.0))
        if event.value is not None:
            best = max(best, event.value)
    return credits


class PortfolioStrategy(Strategy):
    name = "portfolio"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, members: Sequence[Strategy], *,
                 window: int = 100, exploration: float = 0.2, warmup: int = 4):
        super().__init__(space, rng)
        if not members:
            raise ValueError("a portfolio needs at least one member strategy")
        self.members = {m.name: m for m in members}
        self.window = window
        self.exploration = exploration
        self.warmup = warmup  # the first trials are random: nobody has data to beat it with
        self._random_name = "random" if "random" in self.members else None

    def reseed(self, rng: np.random.Generator) -> None:
        super().reseed(rng)
        for member, child in zip(self.members.values(), rng.spawn(len(self.members))):
            member.reseed(child)

    def scores(self, history: History) -> dict[str, float]:
        """AUC credit plus exploration bonus per member (inf for a member never used)."""
        recent = [c for c in improvement_credits(history) if c[0] in self.members][-self.window :]
        per_member: dict[str, list[float]] = {name: [] for name in self.members}
        for name, credit in recent:
            per_member[name].append(credit)
        total = max(1, len(recent))
        scores = {}
        for name, seq in per_member.items():
            n = len(seq)
            if n == 0:
                scores[name] = math.inf
                continue
            auc = sum((j + 1) * c for j, c in enumerate(seq)) / (n * (n + 1) / 2)
            scores[name] = auc + self.exploration * math.sqrt(2.0 * math.log(total) / n)
        return scores

    def choose(self, history: History) -> str:
        if self._random_name and len(history.observed) < self.warmup:
            return self._random_name
        scores = self.scores(history)
        top = max(scores.values())
        tied = [name for name, s in scores.items() if s >= top - 1e-12]
        return tied[int(self.rng.integers(len(tied)))]

    def propose(self, history: History) -> Proposal:
        return self.members[self.choose(history)].propose(history)
