"""Portfolio: a meta-bandit that picks which member proposes each trial and credits improvements.

The first `warmup` trials (8) go to the UCB bandit, which spreads them over the values
of every knob (on a small space that covering is most of what a short budget can do).
On a space of more than `warmup_space` configs (800 by default, through
autotune.strategies.make_strategy) the warm-up shrinks in proportion, to at least one
trial (3 on the 2240 configs of the synthetic kernel caches): there the knobs interact,
the bandit's per-value sweep is close to random search, and the budgets of tens of
trials leave the models little room after a full warm-up.
After that, for every trial, an area-under-curve meta-bandit after OpenTuner's picks the
member of the pool that proposes it. The default pool (autotune.strategies) mixes
kinds of model so that one seed does not depend on one: Boltzmann (kernel regression,
interaction-aware), the bandit (per-value arms), Parzen (TPE over whole configs,
interaction-aware, with a feasibility model) and the regression (Bayesian additive
model, Thompson sampling).

Credit: a member's recent uses (the last `window`, 10, over the pool) form a sequence of
credits, weighted so later uses count more; its score is that AUC plus an exploration
bonus c * sqrt(2 ln(uses of all) / uses of it), c = `exploration` (0.1). A use's credit
is the rank of its result among all results so far, in [0, 1] (credit="rank", the
default: dense enough to learn within a budget of tens of trials), or 1 when it beat
every earlier result, else 0 (credit="best", OpenTuner's). Warm-up trials earn no
credit: they rank high only because they came first. `prior` gives every pool member
one pseudo-use before its real ones (the named credit, 0.5, a median result, for the
others); by default there is none: a member never used scores infinity, so right after the
warm-up every member proposes once, in random order (a member that is not `ready`, such as
Parzen before its start-up, waits), and credit decides from then on
(a member whose results rank low loses its turns within a few trials). Everything is read back from the study's
trials and their 'strategy' attr, so credit survives a resume and counts the work of
every worker.

Optionally a `lead` member proposes while the search keeps improving (while fewer than
`patience` finished trials have passed since the last new best) and the meta-bandit
only picks once it stagnates; off by default (lead=None).

The warm-up, window 10 and exploration 0.1 were chosen in replay on synthetic training
surfaces (studies/records/replay-tuning.json); the pool and prior leave-one-family-out
on real surfaces (studies/records/replay-heldout.md).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

import numpy as np

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History


class CreditLedger:
    """Credit per finished trial, computed once when the trial is first seen (history
    only ever appends, and a credit depends only on what finished before it)."""

    def __init__(self, kind: str):
        if kind not in ("best", "rank"):
            raise ValueError(f"portfolio credit must be 'best' or 'rank', got {kind!r}")
        self.kind = kind
        self.credits: list[tuple[str | None, float]] = []
        self._sorted: list[float] = []  # values so far, ascending (higher is better)
        self._failures = 0

    def update(self, history: History) -> list[tuple[str | None, float]]:
        for event in history.events[len(self.credits):]:
            self.credits.append((event.strategy, self._credit(event.value)))
        return self.credits

    def _credit(self, value: float | None) -> float:
        if value is None:
            self._failures += 1
            return 0.0
        below = bisect.bisect_left(self._sorted, value)
        beaten_all = below == len(self._sorted)
        total = len(self._sorted) + self._failures
        bisect.insort(self._sorted, value)
        if self.kind == "best":
            return 1.0 if beaten_all else 0.0
        return 1.0 if total == 0 else (below + self._failures) / total


def scaled_warmup(warmup: int, n_configs: int, warmup_space: int | None) -> int:
    """The warm-up's length: `warmup` trials on spaces of up to `warmup_space` configs,
    shrinking in proportion on larger ones (at least 1); `warmup` when warmup_space is None."""
    if warmup_space is None or n_configs <= warmup_space:
        return warmup
    return max(1, min(warmup, round(warmup * warmup_space / n_configs)))


class PortfolioStrategy(Strategy):
    name = "portfolio"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, members: Sequence[Strategy], *,
                 pool: Sequence[str] | None = None, window: int = 10, exploration: float = 0.1, warmup: int = 8,
                 warmup_member: str = "bandit", credit: str = "rank", lead: str | None = None,
                 patience: int = 10, prior: Mapping[str, float] | None = None, warmup_space: int | None = None):
        super().__init__(space, rng)
        if not members:
            raise ValueError("a portfolio needs at least one member strategy")
        self.members = {m.name: m for m in members}
        # the members the meta-bandit chooses from (once the lead stagnates, if there is one)
        self.pool = [name for name in (pool or self.members) if name in self.members]
        self.window = window
        self.exploration = exploration
        # The first trials go to one member that explores systematically (the bandit tries
        # every value of every knob): the others' models then start from well-spread data.
        self.warmup = scaled_warmup(warmup, len(space), warmup_space)
        for role, name in (("warmup_member", warmup_member), ("lead", lead)):
            if name is not None and name not in self.members:
                raise ValueError(f"portfolio {role} {name!r} is not among its members {list(self.members)}")
        self.warmup_member = warmup_member
        # the member that proposes while the search improves (None: the meta-bandit always)
        self.lead = lead
        self.patience = patience  # finished trials without a new best before the hand-over
        # one pseudo-use per pool member, credited before its real uses (0.5 where not named):
        # the member with the highest prior is picked first; real credits soon outweigh it
        self.prior = dict(prior or {})
        unknown = [name for name in self.prior if name not in self.pool]
        if unknown:
            raise ValueError(f"portfolio prior names {unknown}, which are not in its pool {self.pool}")
        self._ledger = CreditLedger(credit)
        self._ledger_history: History | None = None

    def reseed(self, rng: np.random.Generator) -> None:
        super().reseed(rng)
        for member, child in zip(self.members.values(), rng.spawn(len(self.members))):
            member.reseed(child)

    def scores(self, history: History) -> dict[str, float]:
        """AUC credit plus exploration bonus per member (inf for one never used when there is no prior)."""
        if self._ledger_history is not history:  # a new study: start the ledger afresh
            self._ledger = CreditLedger(self._ledger.kind)
            self._ledger_history = history
        # warm-up trials ranked high only because they came first: they earn no credit
        credits = self._ledger.update(history)[self.warmup :]
        recent = [c for c in credits if c[0] in self.pool][-self.window :]
        per_member: dict[str, list[float]] = {
            name: [self.prior.get(name, 0.5)] if self.prior else [] for name in self.pool}
        for name, credit in recent:
            per_member[name].append(credit)
        total = max(1, len(recent) + (len(self.pool) if self.prior else 0))
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
        if len(history.observed) < self.warmup:
            return self.warmup_member
        if (self.lead is not None and history.since_improvement() < self.patience
                and self.members[self.lead].ready(history)):
            return self.lead
        # a member whose model lacks data (Parzen before its start-up) waits its turn
        scores = {name: s for name, s in self.scores(history).items() if self.members[name].ready(history)}
        if not scores:
            return self.warmup_member
        top = max(scores.values())
        tied = [name for name, s in scores.items() if s >= top - 1e-12]
        return tied[int(self.rng.integers(len(tied)))]

    def propose(self, history: History) -> Proposal:
        return self.members[self.choose(history)].propose(history)
