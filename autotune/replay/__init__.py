"""Replay: measure the search strategies themselves on recorded surfaces.

    surface = load_surface("studies/surfaces/cpu-tiny-L128.json")   # or a Kernel Tuner cache
    comp = run_comparison(surface, ["portfolio", "random", "tpe"], seeds=range(25))
    summary = summarise(comp)     # budget, optimum, per strategy p_score, reach, ms_per_proposal
"""

from autotune.replay.baseline import budget_for, expected_best_of_draws, random_curve
from autotune.replay.report import summarise, table, write_html, write_json
from autotune.replay.runner import ALL_STRATEGIES, OPTUNA_SAMPLERS, Comparison, RunTrace, replay_run, run_comparison
from autotune.replay.scoring import p_score, reach_fractions
from autotune.replay.loading import load_surface
from autotune.replay.surface import Surface, SurfaceError, surface_document, surface_from_dict, surface_from_kernel_tuner

__all__ = [
    "ALL_STRATEGIES", "OPTUNA_SAMPLERS", "Comparison", "RunTrace", "Surface", "SurfaceError",
    "budget_for", "expected_best_of_draws", "load_surface", "p_score", "random_curve", "reach_fractions",
    "replay_run", "run_comparison", "summarise", "surface_document", "surface_from_dict",
    "surface_from_kernel_tuner", "table", "write_html", "write_json",
]
