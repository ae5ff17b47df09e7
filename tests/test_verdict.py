"""The confirmation's verdict in plain words, as `tune`, `best`, `report` and the dashboard show it."""

from __future__ import annotations

from autotune.verdict import plain_verdict, plural


def _confirmation(verdict: str, medians: list[float], p_values: list[float], *, base: float = 3.0,
                  p_adjusted: float | None = None) -> dict:
    return {
        "verdict": verdict, "alpha": 0.05, "repeats": 6, "processes": 2,
        "p_value": min(p_values), "p_adjusted": p_adjusted,
        "baseline": {"trial": 0, "median": base},
        "candidates": [{"trial": 3 + i, "median": m, "p_value": p} for i, (m, p) in enumerate(zip(medians, p_values))],
        "default": {"trial": 3 if verdict == "improved" else 0},
    }


def test_a_confirmed_winner_is_named_with_its_gain_and_the_bonferroni_factor_explained():
    words = plain_verdict(_confirmation("improved", [3.6, 3.1, 3.0], [0.004, 0.2, 0.5], p_adjusted=0.012))
    assert words.startswith("Trial 3 becomes the default: re-measured 6 times in 2 processes beside the baseline")
    assert "its median score is 20.0% above the baseline's, beyond noise" in words
    assert "p = 0.004; p x 3 candidates = 0.012 < 0.05" in words
    assert "the best of 3 re-measured configs was picked, so its p counts 3 times" in words


def test_a_faster_median_that_is_noise_is_not_called_not_better():
    words = plain_verdict(_confirmation("baseline", [7.083, 3.1], [0.07, 0.4], p_adjusted=0.14))
    assert words.startswith("The baseline stays the default:")
    assert "the best candidate (trial 3) scored 136.1% above the baseline in the median, but its repeats" in words
    assert "too much to rule out noise" in words and "p x 2 candidates = 0.14 >= 0.05" in words
    assert "not better" not in words


def test_a_slower_candidate_and_a_search_without_candidates():
    slower = plain_verdict(_confirmation("baseline", [2.9], [0.42], p_adjusted=0.42))
    assert "scored 3.3% below the baseline in the median" in slower
    assert "Mann-Whitney p = 0.42 >= 0.05." in slower and "candidates =" not in slower  # one candidate: no factor
    empty = {"verdict": "baseline", "reason": "no feasible config scored above the baseline in the search",
             "candidates": []}
    assert plain_verdict(empty) == ("The baseline stays the default: no feasible config scored above the "
                                    "baseline in the search.")
    assert plain_verdict(None).startswith("No confirmation yet, so the baseline stays the default")


def test_counts_read_as_english():
    assert plural(1, "trial") == "1 trial" and plural(2, "trial") == "2 trials"
    assert plural(1, "entry", "entries") == "1 entry" and plural(0, "entry", "entries") == "0 entries"
