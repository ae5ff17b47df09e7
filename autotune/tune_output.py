"""What `autotune tune` shows while it runs: one line per trial (with a tqdm bar on a
terminal); the summary at the end is printed by autotune.commands.tune."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from autotune.objective import median, recall_of
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
    """The progress of one study's search: a tqdm bar on a terminal, and one log line per
    trial everywhere (the study's label, autotune.store.layout.study_tail; trial i/N, strategy, config, score, best, ETA)."""

    def __init__(self, label: str, total: int | None, done: int, deadline: float | None):
        self.label, self.total, self.done, self.deadline = label, total, done, deadline
        self._lock = threading.Lock()  # the search threads of --gpus report here together
        self.started, self.measured = time.monotonic(), 0
        self.bar = tqdm(total=total, initial=min(done, total) if total else done, desc=label,
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
        say(f"{self.label} trial {count} (#{trial.number}){where} [{strategy}] {fmt_config(params)}: {detail}; "
             f"best {best_text}; {trial.user_attrs.get('wall_s', 0):.1f} s; ETA {eta_text}")
        self.bar.set_postfix_str(f"{strategy} last={last} best={best_text}")

    def close(self) -> None:
        self.bar.close()


def stderr_hint(trial: FrozenTrial) -> str:
    tail = (trial.user_attrs.get("stderr_tail") or "").strip().splitlines()[-5:]
    return ("\n  stderr:\n    " + "\n    ".join(tail)) if tail else ""
