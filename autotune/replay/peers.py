"""Kernel Tuner's own strategies, replayed on the same surface with the same accounting.

    trace = kt_run(surface, "kt:genetic_algorithm", seed=0, max_evals=76)

`kt:NAME` runs Kernel Tuner's strategy NAME (genetic_algorithm, pso, dual_annealing,
simulated_annealing, ...) in its simulation mode: `tune_kernel(..., simulation_mode=True,
cache=FILE, strategy=NAME, strategy_options={"max_fevals": N})`, the cache a temporary
Kernel Tuner cache written from the surface, the search restricted to its valid configs.

Accounting, as for this project's strategies (autotune.replay.runner): the first visit of
a config costs one evaluation, a revisit is free. Kernel Tuner's simulation runner charges
`max_fevals` the same way (one per first visit, revisits free), and its strategies may
revisit; the trace is built from the order of first visits in Kernel Tuner's results, so
`max_fevals` = N unique evaluations, the same budget. Some strategies stop earlier by
their own count (dual_annealing hands max_fevals to scipy as `maxfun`, which counts
revisits too): such a run is restarted (seeded anew) with the evaluations left, its
configs already visited free, until N unique evaluations or MAX_RESTARTS restarts, as a
run of this project's strategies goes on until its budget (a restart that lets Kernel
Tuner's end-of-budget exception escape, as simulated annealing does with one evaluation
left, ends the run: the runs are then shorter by that evaluation and keep their best).
A run that goes on revisiting without spending its budget (Kernel Tuner's GA on a small
space breeds configs it has seen, which cost nothing) is stopped after RUN_LIMIT_S
seconds and keeps what it visited, as replay stops a sampler after 50 asks in a row
that cost nothing. A config that fails counts as
the surface's worst value. Noise: each seed writes the cache with one recorded sample per
config drawn from that seed's noise stream, as a first visit in replay returns one
sample. Seeding: Kernel Tuner's strategies draw from Python's `random` and numpy's global
state; both are seeded from the replay seed and restored afterwards. The strategies
pick their own first configs: the seed's shared start config (autotune.replay.runner)
does not apply to them.

Kernel Tuner is an optional extra: `pip install 'xlstm-autotune[peers]'`.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autotune.replay.surface import Surface

# Kernel Tuner is an optional extra: imported where used, so replay runs without it.

KT_PREFIX = "kt:"
KT_EXTRA_HINT = "pip install 'xlstm-autotune[peers]'"
KT_NOISE_STREAM = 0x5EED  # the same stream replay's first visits draw from
_KT_NAME = "replay"  # kernel and device name of the temporary cache
MAX_RESTARTS = 20  # restarts of a run that stopped short of its unique evaluations
# A Kernel Tuner run that revisits forever (a GA on a small space breeds only configs it
# has seen, which cost nothing) is stopped after this long, keeping what it visited
RUN_LIMIT_S = 30.0


class PeerUnavailable(RuntimeError):
    """A kt: strategy was asked for but Kernel Tuner is not installed."""


def is_peer(name: str) -> bool:
    return name.startswith(KT_PREFIX)


def require_kernel_tuner():
    try:
        import kernel_tuner
    except ImportError:
        raise PeerUnavailable(f"the kt: strategies need Kernel Tuner; install it with {KT_EXTRA_HINT}") from None
    return kernel_tuner


def kt_strategies() -> tuple[str, ...]:
    """Kernel Tuner's strategy names (empty without Kernel Tuner)."""
    try:
        from kernel_tuner.interface import strategy_map
    except ImportError:
        return ()
    return tuple(sorted(strategy_map))


def config_key(config: dict, keys: list[str]) -> str:
    """Kernel Tuner's cache key: the parameter values joined by commas."""
    return ",".join(str(config[k]) for k in keys)


def cache_document(surface: Surface, seed: int) -> dict:
    """A Kernel Tuner cache of the surface: per valid config one recorded sample, drawn
    from the seed's noise stream; a failing config marked RuntimeFailedConfig."""
    keys = list(surface.knobs)
    noise = np.random.default_rng([seed, KT_NOISE_STREAM])
    cache = {}
    for config, samples in zip(surface.configs, surface.samples):
        entry = dict(config)
        entry["time"] = float(samples[noise.integers(len(samples))]) if len(samples) else "RuntimeFailedConfig"
        cache[config_key(config, keys)] = entry
    return {"device_name": _KT_NAME, "kernel_name": _KT_NAME, "problem_size": [1], "tune_params_keys": keys,
            "tune_params": surface.knobs, "objective": "time", "cache": cache}


@contextlib.contextmanager
def time_limit(seconds: float, stop: type[BaseException]) -> Iterator[None]:
    """Raise `stop` inside the block after `seconds` (main thread: SIGALRM; elsewhere no limit).
    Kernel Tuner's strategies catch their StopCriterionReached and return what they ran."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise stop(f"stopped after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def seeded_global_random(seed: int) -> Iterator[None]:
    """Seed Python's and numpy's global generators, restoring both afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def kt_first_visits(surface: Surface, strategy: str, seed: int, max_evals: int) -> tuple[list[int], float]:
    """Config indices in the order Kernel Tuner's `strategy` first visited them (at most
    max_evals, restarts included), and the wall time of its runs in seconds."""
    kernel_tuner = require_kernel_tuner()
    from kernel_tuner.util import StopCriterionReached

    keys = list(surface.knobs)
    index_of = {config_key(c, keys): i for i, c in enumerate(surface.configs)}
    max_evals = min(max_evals, len(surface))

    def in_cache(params: dict) -> bool:  # restricts Kernel Tuner's space to the surface's configs
        return config_key(params, keys) in index_of

    order: list[int] = []
    seen: set[int] = set()
    wall = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.json"
        cache.write_text(json.dumps(cache_document(surface, seed)), encoding="utf-8")
        for restart in range(MAX_RESTARTS + 1):
            started = time.perf_counter()
            try:
                # Kernel Tuner's per-run warnings (no thread block dimensions among the knobs,
                # scipy's overflow in annealing) say nothing about the replay
                with seeded_global_random(seed + 1_000_003 * restart), contextlib.redirect_stdout(None), \
                        warnings.catch_warnings(), time_limit(RUN_LIMIT_S, StopCriterionReached):
                    warnings.simplefilter("ignore")
                    results, _ = kernel_tuner.tune_kernel(
                        _KT_NAME, "", [1], [], {k: list(v) for k, v in surface.knobs.items()}, simulation_mode=True,
                        cache=str(cache), strategy=strategy, strategy_options={"max_fevals": max_evals - len(order)},
                        restrictions=in_cache, objective="time", objective_higher_is_better=surface.maximize,
                        quiet=True, verbose=False)
            except StopCriterionReached:  # a strategy that lets its budget's end escape (SA at 1 left)
                break
            finally:
                wall += time.perf_counter() - started
            for result in results:
                index = index_of.get(config_key(result, keys))
                if index is not None and index not in seen:
                    seen.add(index)
                    order.append(index)
            if len(order) >= max_evals or time.perf_counter() - started >= RUN_LIMIT_S:
                break  # the budget is spent, or the run was stopped: no restart
    return order[:max_evals], wall
