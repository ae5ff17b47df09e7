"""One replay run as a search for the loop (autotune.loop), measured by SurfaceDraws.

`next` asks the study until its sampler proposes a config not measured yet: that is a
Step (the config's index on the surface), measured by the evaluator. Invalid configs
and revisits cost no evaluation, so they are told there and then, inside `next`; so is
a sampler's SpaceExhausted. The run is DONE after `max_evals` evaluations, `max_proposals`
asks, or `stall_limit` asks in a row that spent no evaluation.
"""

from __future__ import annotations

import time

import numpy as np
import optuna
from optuna.trial import TrialState

from autotune.loop import DONE, Step
from autotune.replay.surface import Surface
from autotune.strategies import STRATEGY_ATTR, SpaceExhausted, StrategySampler

START_LABEL = "start"
WARM_LABEL = "warm start"


class ReplaySearch:
    def __init__(self, study: optuna.Study, surface: Surface, strategy: str, *, max_evals: int, max_proposals: int,
                 stall_limit: int, start: bool, seeded: int):
        """`start`: trial 0 is the enqueued start config; `seeded`: the warm-start trials after it."""
        self.study, self.surface, self.strategy = study, surface, strategy
        self.max_evals, self.max_proposals, self.stall_limit = max_evals, max_proposals, stall_limit
        self.start, self.seeded = start, seeded
        self.space = surface.space
        self.dists = self.space.distributions()
        self.filled = surface.filled_values()
        self.penalty = surface.worst
        # Optuna's samplers ignore FAIL trials and would propose the same config forever:
        # they are told the worst value instead; this project's strategies get FAIL
        self.own = isinstance(study.sampler, StrategySampler)
        self.told: dict[int, float | None] = {}  # config index -> what its first visit returned
        self.best: list[float] = []  # best true value so far, per evaluation
        self.proposed_by: list[str] = []
        self.proposal_s: list[float] = []
        self.proposals = self.invalid = self.revisits = self.stalled = 0
        self.exhausted = False
        self.current: float | None = None

    def next(self, slot) -> "Step | object":
        while (len(self.best) < self.max_evals and self.proposals < self.max_proposals
               and self.stalled < self.stall_limit):
            asked_at = time.perf_counter()
            trial = self.study.ask()
            try:
                params = {k: trial.suggest_categorical(k, self.dists[k].choices) for k in self.space.knob_names}
            except SpaceExhausted:
                self.study.tell(trial, state=TrialState.FAIL)
                self.exhausted = True
                return DONE
            self.proposal_s.append(time.perf_counter() - asked_at)
            self.proposals += 1
            index = self.space.index(params)
            if index is None:
                self.invalid += 1
                self.stalled += 1
                self._tell(trial, None)
            elif index in self.told:
                self.revisits += 1
                self.stalled += 1
                self._tell(trial, self.told[index])
            else:
                self.stalled = 0
                return Step(index, timeout_s=0.0, item=trial)  # a draw is instant: no time limit to keep
        return DONE

    def tell(self, step: Step, outcome, slot) -> bool:
        index, trial = step.request, step.item
        observed = outcome.result.metrics[self.surface.objective] if outcome.ok else None
        self.told[index] = observed
        value = self.filled[index]
        self.current = value if self.current is None else self.surface.best_of(np.array([self.current, value]))
        self.best.append(self.current)
        label = trial.user_attrs.get(STRATEGY_ATTR, self.strategy)
        if trial.number < int(self.start) + self.seeded:
            label = START_LABEL if self.start and trial.number == 0 else WARM_LABEL
        self.proposed_by.append(str(label))
        self._tell(trial, observed)
        return True

    def _tell(self, trial: optuna.Trial, observed: float | None) -> None:
        if observed is not None:
            self.study.tell(trial, observed)
        elif self.own:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, self.penalty)
