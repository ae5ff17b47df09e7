"""The search loop: ask for a measurement, measure it, tell the result, until done.

What is searched is a Search: `next(slot)` gives the next Step (a benchmark request
with its time limit), or WAIT (nothing to start yet) or DONE; `tell(step, outcome,
slot)` records the outcome and says whether to go on. The tuner's search is a study
(autotune.study_search), the sweep's a fixed order of runs (autotune.sweep_runs), replay's
a study answered by a recorded surface (autotune.replay.search, with SurfaceDraws).

The loop itself owns what every search shares: one evaluator per slot (GPU), each slot
asking, measuring and telling on its own (several slots in threads); Ctrl-C (a first
press lets the running measurements finish, a second kills them) and a stop of every
slot when one fails.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from autotune.bench.config import BenchRequest
from autotune.evaluators import Evaluator
from autotune.trials import TrialOutcome
from autotune.tune_output import say
from autotune.workers import Slot

WAIT_S = 1.0  # how often a slot with nothing to start asks again
TERM_JOIN_S = 30.0  # after a third Ctrl-C, how long the slots get to stop
WAIT, DONE = object(), object()  # what Search.next returns besides a Step


@dataclass
class Step:
    """One measurement a search asks for."""

    request: BenchRequest | Any  # what the evaluator measures (replay: a config's index on the surface)
    timeout_s: float
    item: Any = None  # what the search measures: a trial and its params, a sweep's run
    on_tick: Callable[[], None] | None = None  # about every tick_s while it runs (heartbeats)
    on_start: Callable[[int], None] | None = None  # with the measuring process's pid
    abandon: Callable[[], bool] | None = None  # True: stop measuring (taken over elsewhere)


class Search(Protocol):
    def next(self, slot: Slot) -> "Step | object": ...

    def tell(self, step: Step, outcome: TrialOutcome, slot: Slot) -> bool: ...


class NoStop:
    """Stop control of a loop that only a KeyboardInterrupt ends."""

    presses = 0
    stop_requested = False

    def kill_requested(self) -> bool:
        return False

    def notices(self) -> list[str]:
        return []


class SearchLoop:
    def __init__(self, search: Search, evaluators: Sequence[tuple[Slot, Evaluator]], *, stop=None,
                 tick_s: float = 10.0):
        self.search = search
        self.evaluators = list(evaluators)
        self.stop = stop or NoStop()
        self.tick_s = tick_s
        self._abort = threading.Event()  # a slot failed or the search said stop: every slot stops

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def _notices(self) -> None:
        for notice in self.stop.notices():
            say(notice)

    def measure(self, evaluator: Evaluator, step: Step) -> TrialOutcome:
        """One measurement, cancelled by a second Ctrl-C or by the step's abandon."""

        def cancel() -> bool:
            self._notices()
            return self.stop.kill_requested() or bool(step.abandon and step.abandon())

        outcome = evaluator.measure(step.request, timeout_s=step.timeout_s, on_tick=step.on_tick,
                                    tick_s=self.tick_s, cancel=cancel, on_start=step.on_start)
        self._notices()
        return outcome

    def run(self) -> None:
        """Until the search is done. One slot runs in this thread, several each in a
        thread of its own; the first error of a slot is raised here."""
        if len(self.evaluators) == 1:
            self._drive(*self.evaluators[0])
            return
        with ThreadPoolExecutor(len(self.evaluators), thread_name_prefix="search-slot") as pool:
            futures = [pool.submit(self._drive_or_abort, slot, evaluator) for slot, evaluator in self.evaluators]
            try:
                while True:
                    done, pending = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                    self._notices()
                    if not pending or any(f.exception() for f in done):
                        break
            except KeyboardInterrupt:  # third Ctrl-C: the measurements are being killed
                self._abort.set()
                wait(futures, timeout=TERM_JOIN_S)
                raise
            wait(futures)
            for future in futures:
                future.result()  # the first slot error, raised here

    def _drive_or_abort(self, slot: Slot, evaluator: Evaluator) -> None:
        try:
            self._drive(slot, evaluator)
        except BaseException:
            self._abort.set()
            raise

    def _drive(self, slot: Slot, evaluator: Evaluator) -> None:
        while not self._abort.is_set():
            if self.stop.stop_requested:
                return
            step = self.search.next(slot)
            if step is DONE:
                return
            if step is WAIT:
                time.sleep(WAIT_S)
                continue
            outcome = self.measure(evaluator, step)
            if not self.search.tell(step, outcome, slot):
                self._abort.set()
                return
