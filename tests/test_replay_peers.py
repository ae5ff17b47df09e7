"""Kernel Tuner's strategies in replay (the kt: peers) and the paired statistics."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from autotune.errors import UserError
from autotune.replay import load_surface, replay_run, run_comparison, summarise
from autotune.commands.replay import parse_strategies
from autotune.replay.stats import versus_best


def test_a_kt_strategy_without_kernel_tuner_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernel_tuner", None)  # import kernel_tuner now fails
    with pytest.raises(UserError, match=r"pip install 'xlstm-autotune\[peers\]'"):
        parse_strategies("portfolio,kt:genetic_algorithm")
    assert parse_strategies("portfolio,random") == ["portfolio", "random"]  # no kt: name, no Kernel Tuner needed


def test_kt_strategies_replay_with_unique_evaluations_and_are_seeded():
    pytest.importorskip("kernel_tuner")
    surface = load_surface("synthetic:kernel:0")
    with pytest.raises(UserError, match="kt:genetic_algorithm"):
        parse_strategies("kt:no_such_strategy")
    for name in ("kt:genetic_algorithm", "kt:pso"):
        a = replay_run(surface, name, seed=3, max_evals=30)
        b = replay_run(surface, name, seed=3, max_evals=30)
        assert a.evaluations == 30  # max_fevals counts first visits, as replay does
        assert np.array_equal(a.best, b.best)
        assert np.all(np.diff(a.best) <= 0)  # best so far of a minimised time
        assert a.best[-1] >= surface.optimum
        assert set(a.proposed_by) == {name}


def test_paired_ties_are_differences_under_two_standard_errors():
    rng = np.random.default_rng(0)
    luck = rng.normal(0, 1.5, 50)  # shared per seed: pairing removes it
    per_seed = {"a": list(luck + 0.50), "b": list(luck + 0.49 + rng.normal(0, 0.2, 50)), "c": list(luck + 0.2)}
    vs = versus_best(per_seed)
    assert vs["a"]["best"] == "a" and vs["a"]["tie"]
    assert vs["b"]["tie"] and abs(vs["b"]["diff"]) < 2 * vs["b"]["se"]
    assert not vs["c"]["tie"] and vs["c"]["diff"] == pytest.approx(-0.3)
    # unpaired, c would tie: its mean lies within 2 standard errors of a mean
    assert abs(np.mean(per_seed["c"]) - np.mean(per_seed["a"])) < 2 * np.std(per_seed["a"], ddof=1) / np.sqrt(50)


def test_a_comparison_reports_standard_errors_and_verdicts():
    surface = load_surface("synthetic:xlstm:0")
    summary = summarise(run_comparison(surface, ["random", "regression"], seeds=range(4), horizon=20))
    for s in summary["strategies"].values():
        p = s["p_score"]
        assert p["se"] == pytest.approx(np.std(p["per_seed"], ddof=1) / 2)
        assert set(p["vs_best"]) == {"best", "diff", "se", "tie"}
