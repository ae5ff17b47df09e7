"""Genetic algorithm assembled from a DEAP toolbox.

The population is the best measured configs of the study (elitism: the best always
survive, whoever measured them). Each proposal breeds one child: two parents by
tournament selection, uniform crossover, neighbour mutation (a gene steps to an adjacent
value of its ordered value list; a categorical gene jumps to another value), then a
repair to the nearest free valid config. Until the population is filled the GA samples
uniformly at random.

DEAP's operators draw from Python's global `random`; they run on a private state that
is swapped in and out, so a seeded GA is reproducible and leaves `random` alone.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
from deap import base, creator, tools

from autotune.space import DiscreteSpace
from autotune.strategies.base import Proposal, Strategy
from autotune.strategies.history import History

if not hasattr(creator, "AutotuneFitness"):
    creator.create("AutotuneFitness", base.Fitness, weights=(1.0,))
    creator.create("AutotuneIndividual", list, fitness=creator.AutotuneFitness)


def neighbour_mutation(individual: list, *, sizes: np.ndarray, ordered: tuple[bool, ...], indpb: float) -> tuple:
    """Move each gene with probability indpb to a neighbouring value; at least one moves."""
    genes = [k for k in range(len(individual)) if sizes[k] > 1]
    if not genes:
        return (individual,)
    moving = [k for k in genes if random.random() < indpb] or [random.choice(genes)]
    for k in moving:
        here = individual[k]
        if ordered[k]:
            step = random.choice((-1, 1))
            if not 0 <= here + step < sizes[k]:
                step = -step
            individual[k] = here + step
        else:
            individual[k] = random.choice([v for v in range(int(sizes[k])) if v != here])
    return (individual,)


class GeneticStrategy(Strategy):
    name = "genetic"

    def __init__(self, space: DiscreteSpace, rng: np.random.Generator, *, population: int = 4,
                 tournament: int = 4, cxpb: float = 0.7, indpb: float = 0.2):
        super().__init__(space, rng)
        self.population = population
        self.tournament = tournament
        self.cxpb = cxpb
        self.toolbox = base.Toolbox()
        self.toolbox.register("select", tools.selTournament, tournsize=tournament)
        self.toolbox.register("mate", tools.cxUniform, indpb=0.5)
        self.toolbox.register("mutate", neighbour_mutation, sizes=space.sizes, ordered=space.ordered,
                              indpb=indpb)
        self._random_state = random.Random(int(rng.integers(2**63))).getstate()

    def reseed(self, rng: np.random.Generator) -> None:
        super().reseed(rng)
        self._random_state = random.Random(int(rng.integers(2**63))).getstate()

    @contextmanager
    def _private_random(self):
        outer = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outer)

    def _population(self, history: History) -> list:
        measured = history.measured
        utility = history.utility()
        best = measured[np.argsort(-utility[measured], kind="stable")[: self.population]]
        pop = []
        for i in best:
            ind = creator.AutotuneIndividual(self.space.coords[i].tolist())
            ind.fitness.values = (float(utility[i]),)
            pop.append(ind)
        return pop

    def breed(self, history: History) -> list[int]:
        """One child's coordinates (value positions per knob), before repair."""
        pop = self._population(history)
        with self._private_random():
            mother, father = (self.toolbox.clone(p) for p in self.toolbox.select(pop, 2))
            if random.random() < self.cxpb:
                self.toolbox.mate(mother, father)
            (child,) = self.toolbox.mutate(mother)
        return list(child)

    def propose(self, history: History) -> Proposal:
        if len(history.measured) < max(2, self.population):
            return Proposal(history.random_free(self.rng), self.name)
        child = np.asarray(self.breed(history), dtype=np.int32)
        free = history.free_indices()
        dist = self.space.distance(child, free)
        nearest = np.flatnonzero(dist <= dist.min() + 1e-12)
        return Proposal(int(free[nearest[self.rng.integers(len(nearest))]]), self.name)
