"""The confirmation's verdict in plain words, for every place a user reads it.

`autotune tune`'s summary, `best`, `report` and the dashboard all say the same thing:
which config `autotune export` writes for a study and why, with the numbers behind it.
The words are built from the study's 'confirmation' user attr (autotune/confirm.py
writes it), so they also read right for studies confirmed by older versions.
"""

from __future__ import annotations

from typing import Any

# optuna_dashboard is optional for the tuner: imported where the note is written.

# Study user attr holding the plain-words verdict (the dashboard lists user attrs).
VERDICT_ATTR = "verdict"
NO_CONFIRMATION = (
    "no confirmation yet, so the baseline stays the default; run the same `autotune tune` "
    "command without --skip-confirmation to confirm"
)


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 trial', '2 trials' ('1 entry', '2 entries' with many='entries')."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def _winner(confirmation: dict[str, Any]) -> dict[str, Any] | None:
    """The re-measured candidate the test was made on: the best median among the
    candidates that were tested (they carry a p-value)."""
    tested = [c for c in confirmation.get("candidates") or []
              if isinstance(c, dict) and c.get("p_value") is not None and c.get("median") is not None]
    return max(tested, key=lambda c: (c["median"], -c["p_value"])) if tested else None


def _test_words(confirmation: dict[str, Any], winner: dict[str, Any], k: int) -> str:
    """The significance test as a sentence, the Bonferroni factor spelled out."""
    p, alpha = winner["p_value"], confirmation.get("alpha", 0.05)
    p_adj = confirmation.get("p_adjusted")
    p_adj = min(1.0, p * k) if p_adj is None else p_adj
    relation = "<" if p_adj < alpha else ">="
    if k == 1:
        return f"Mann-Whitney p = {p:.3g} {relation} {alpha:g}."
    return (f"Mann-Whitney p = {p:.3g}; p x {k} candidates = {p_adj:.3g} {relation} {alpha:g} "
            f"(Bonferroni correction: the best of {k} re-measured configs was picked, so its p counts {k} times).")


def plain_verdict(confirmation: Any) -> str:
    """Two sentences: what export writes for this study and why, then the test."""
    if not isinstance(confirmation, dict) or confirmation.get("verdict") not in ("improved", "baseline"):
        return NO_CONFIRMATION[0].upper() + NO_CONFIRMATION[1:] + "."
    base = confirmation.get("baseline") or {}
    k = len(confirmation.get("candidates") or []) or 1
    repeats, processes = confirmation.get("repeats"), confirmation.get("processes", 1)
    how = ""
    if repeats:
        how = (f"re-measured {plural(int(repeats), 'time')} in "
               f"{plural(int(processes or 1), 'process', 'processes')} beside the baseline, ")
    winner = _winner(confirmation)
    gain = None
    if winner is not None and base.get("median"):
        gain = winner["median"] / base["median"] - 1.0
    if confirmation["verdict"] == "improved" and (winner is None or gain is None):
        default = confirmation.get("default") or {}
        reason = str(confirmation.get("reason") or "it beat the baseline when re-measured").rstrip(".")
        return f"Trial {default.get('trial')} becomes the default: {reason}."
    if confirmation["verdict"] == "improved":
        return (f"Trial {winner['trial']} becomes the default: {how}its median score is {gain:.1%} above "
                f"the baseline's, beyond noise. {_test_words(confirmation, winner, k)}")
    if winner is None or gain is None:
        reason = str(confirmation.get("reason") or "no config beat it").rstrip(".")
        return f"The baseline stays the default: {reason}."
    if gain <= 0:
        change = f"scored {abs(gain):.1%} below the baseline in the median"
    else:
        change = (f"scored {gain:.1%} above the baseline in the median, but its repeats overlap the "
                  "baseline's too much to rule out noise")
    return (f"The baseline stays the default: {how}the best candidate (trial {winner['trial']}) {change}. "
            f"{_test_words(confirmation, winner, k)}")


def publish(study, confirmation: Any) -> str:
    """Store the plain-words verdict on the study: a user attr and the study's
    optuna-dashboard note, so the dashboard says what export writes. Returns the words."""
    words = plain_verdict(confirmation)
    study.set_user_attr(VERDICT_ATTR, words)
    try:
        from optuna_dashboard import save_note
    except ImportError:  # the dashboard is optional for the tuner
        return words
    save_note(study, f"## What `autotune export` writes\n\n{words}\n\n"
                     "The search's best score is the maximum of noisy measurements and stays "
                     "unconfirmed until this verdict says otherwise.\n")
    return words
