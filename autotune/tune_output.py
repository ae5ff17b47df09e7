"""What `autotune tune` prints: one line per trial (with a tqdm bar on a terminal) and a
summary per context length."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from autotune.defaults import DEFAULT_PATH as DEFAULTS_FILE
from autotune.objective import median, recall_of
from autotune.report import DEFAULT_OUT as REPORT_FILE
from autotune.verdict import plain_verdict, plural
from autotune.workers import Slot


def say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def fmt_config(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


@dataclass
class ContextResult:
    context: int
    study: str | None = None
    finished: int = 0
    failed: int = 0
    best: FrozenTrial | None = None
    baseline_value: float | None = None
    verdict: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class Progress:
    """The progress of one context's search: a tqdm bar on a terminal, and one log
    line per trial everywhere (trial i/N, strategy, config, score, best, ETA)."""

    def __init__(self, context: int, total: int | None, done: int, deadline: float | None):
        self.context, self.total, self.done, self.deadline = context, total, done, deadline
        self._lock = threading.Lock()  # the search threads of --gpus report here together
        self.started, self.measured = time.monotonic(), 0
        self.bar = tqdm(total=total, initial=min(done, total) if total else done, desc=f"L{context}",
                        unit="trial", file=sys.stderr, dynamic_ncols=True, disable=None)

    def eta(self) -> float | None:
        now = time.monotonic()
        left = None if self.deadline is None else max(0.0, self.deadline - now)
        if self.total is not None and self.measured:
            by_count = (now - self.started) / self.measured * max(0, self.total - self.done)
            left = by_count if left is None else min(left, by_count)
        return left

    def trial(self, trial: FrozenTrial, params: dict[str, Any], best: FrozenTrial | None,
              slot: Slot | None = None) -> None:
        with self._lock:
            self._trial(trial, params, best, slot.label if slot is not None else "")

    def _trial(self, trial: FrozenTrial, params: dict[str, Any], best: FrozenTrial | None, where: str) -> None:
        if not trial.user_attrs.get("stale"):
            self.done += 1
            self.measured += 1
            self.bar.update(1)
        strategy = trial.user_attrs.get("strategy")
        if trial.state == TrialState.COMPLETE:
            m = trial.user_attrs.get("metrics") or {}
            last = f"{trial.value:.3f}"
            detail = (f"score {last} (prefill {median(m.get('prefill_tok_s')) or 0:.4g} tok/s, decode "
                      f"{median(m.get('decode_tok_s')) or 0:.4g} tok/s, recall {recall_of(m):.3f})")
        else:
            last = f"FAIL({trial.user_attrs.get('error_kind')})"
            detail = f"FAIL {trial.user_attrs.get('error_kind')}: {trial.user_attrs.get('error_message')}"
        best_text = f"{best.value:.3f}" if best is not None else "n/a"
        eta = self.eta()
        eta_text = fmt_time(eta) if eta is not None else "?"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        where = f" on {where}" if where else ""
        say(f"L{self.context} trial {count} (#{trial.number}){where} [{strategy}] {fmt_config(params)}: {detail}; "
             f"best {best_text}; {trial.user_attrs.get('wall_s', 0):.1f} s; ETA {eta_text}")
        self.bar.set_postfix_str(f"{strategy} last={last} best={best_text}")

    def close(self) -> None:
        self.bar.close()


def stderr_hint(trial: FrozenTrial) -> str:
    tail = (trial.user_attrs.get("stderr_tail") or "").strip().splitlines()[-5:]
    return ("\n  stderr:\n    " + "\n    ".join(tail)) if tail else ""


def summary_lines(result: ContextResult) -> list[str]:
    head = f"L{result.context} {result.study or ''}".rstrip()
    if result.error:
        return [f"{head}: ERROR {result.error}"]
    lines = [f"{head}: {plural(result.finished, 'trial')} ({result.failed} failed)"
             + (f"; {'; '.join(result.notes)}" if result.notes else "")]
    if result.best is not None:
        base = f"{result.baseline_value:.3f}" if result.baseline_value is not None else "n/a"
        lines.append(f"  search max (unconfirmed) {result.best.value:.3f} (baseline {base}): trial {result.best.number} "
                     f"[{result.best.user_attrs.get('strategy')}] {fmt_config(result.best.params)}")
    if result.verdict:
        lines.append(f"  verdict: {plain_verdict(result.verdict)}")
    return lines


def next_steps(results: list[ContextResult], *, store: str, selector: str) -> list[str]:
    """The closing lines of a run: what was found, where it is, what to run next.
    selector: the arguments that name this run's studies to the other commands."""
    confirmed = [r for r in results if r.verdict and r.verdict.get("verdict") == "improved"]
    decided = [r for r in results if r.verdict]
    if confirmed:
        found = (f"Found: a config that beats the baseline beyond noise at "
                 f"{', '.join(f'L{r.context}' for r in confirmed)}"
                 f" ({len(confirmed)} of {plural(len(results), 'context length')}); see the verdicts above.")
    elif any(r.verdict.get("candidates") for r in decided):
        found = ("Found: nothing that beats the baseline beyond noise; the baseline stays the default "
                 "(the verdicts above say how close the best candidates came).")
    elif decided:
        found = ("Found: no config scored above the baseline in the search; the baseline stays the "
                 "default (on this machine, today's default is already the fastest config tried).")
    else:
        found = "No verdict yet: confirmation has not run, so the baseline stays the default."
    commands = [
        (f"autotune best {selector}", "the table per context length and the verdicts"),
        (f"autotune export {selector}", f"write {DEFAULTS_FILE}, which the runner and `autotune generate` read"),
        (f"autotune report {selector}", f"one HTML page with the figures ({REPORT_FILE})"),
        (f"autotune dashboard {selector}", "optuna-dashboard on the store, http://127.0.0.1:8080/"),
    ]
    width = max(len(c) for c, _ in commands)
    return ["", found, f"Every trial is in the store {store}", "Next:",
            *(f"  {command.ljust(width)}  # {what}" for command, what in commands)]
