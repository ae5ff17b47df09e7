"""The runs of a sweep (autotune.sweep) as a search for the loop (autotune.loop).

Runs go in the sweep's shuffled order, each journalled as it finishes, with a time
limit that follows the finished runs' wall times; `--stop-after` ends the sweep before a
run that could end past it, and a baseline whose every run failed ends it at once.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from autotune.errors import UserError
from autotune.loop import DONE, Step
from autotune.trials import bench_request
from autotune.workers import Slot


class SweepRuns:
    """The sweep as a search for the loop (autotune.loop): its runs in their order, each
    journalled as it finishes; done early when --stop-after leaves no time for the next."""

    def __init__(self, spec, space, journal, order, todo, base_index: int, baseline, *, context: int, repeats: int,
                 device: str, timeout_s: float | None, stop_after_s: float | None, log: Callable[[str], None]):
        self.spec, self.space, self.journal = spec, space, journal
        self.position = {pair: k for k, pair in enumerate(order)}
        self.total, self.todo = len(order), list(todo)
        self.base_index, self.baseline, self.repeats = base_index, baseline, repeats
        self.context, self.device, self.timeout_s, self.stop_after_s = context, device, timeout_s, stop_after_s
        self.log = log
        self.done = 0
        self.stopped = False  # --stop-after ended the sweep; the journal keeps its runs
        self.started = time.monotonic()

    def _limit(self) -> float:
        limits = self.spec.trials
        walls = [row["wall_s"] for row in self.journal.runs.values() if row["result"].get("status") == "ok"]
        if self.timeout_s:
            return self.timeout_s
        if not walls:
            return limits.timeout_cap_s
        return min(limits.timeout_cap_s, max(limits.timeout_min_s, limits.timeout_factor * statistics.median(walls)))

    def next(self, slot: Slot):
        if self.done == len(self.todo):
            return DONE
        limit = self._limit()
        if self.stop_after_s is not None and time.monotonic() - self.started + limit > self.stop_after_s:
            if self.done == 0:
                raise UserError(f"--stop-after {self.stop_after_s:g} leaves no time for one run "
                                f"(each may take up to {limit:g} s)")
            self.log(f"stopped after {self.done} runs: the next could end past --stop-after {self.stop_after_s:g} s; "
                     f"{len(self.todo) - self.done} to go, the same command continues from {self.journal.path}")
            self.stopped = True
            return DONE
        index, repeat = self.todo[self.done]
        request = bench_request(self.spec, device=self.device, context=self.context, params=self.space.configs[index],
                                repeats=self.spec.workload.repeats, timeout_s=limit)
        return Step(request, limit, (index, repeat))

    def tell(self, step: Step, outcome, slot: Slot) -> bool:
        index, repeat = step.item
        self.done += 1
        self.journal.add({"index": index, "repeat": repeat, "order": self.position[(index, repeat)],
                          "result": outcome.result.raw, "wall_s": outcome.wall_s,
                          "stderr_tail": outcome.stderr_tail if not outcome.ok else ""})
        eta = (time.monotonic() - self.started) / self.done * (len(self.todo) - self.done)
        status = "ok" if outcome.ok else f"FAILED ({outcome.error_kind})"
        knobs = self.space.configs[index]
        self.log(f"  [{self.total - len(self.todo) + self.done}/{self.total}] "
                 f"{' '.join(f'{k}={v}' for k, v in knobs.items())} r{repeat}: "
                 f"{status} in {outcome.wall_s:.1f} s; ETA {eta / 60:.1f} min")
        if index == self.base_index:
            refuse_a_failed_baseline(self.journal, self.base_index, self.repeats, self.baseline)
        return True


def refuse_a_failed_baseline(journal, base_index: int, repeats: int, baseline: dict[str, Any]) -> None:
    """Every score is relative to the baseline: once all its runs failed, the rest of the
    sweep could never be scored."""
    results = [row["result"] for (i, _), row in journal.runs.items() if i == base_index]
    if len(results) == repeats and all(r.get("status") != "ok" for r in results):
        kinds = ", ".join(sorted({(r.get("error") or {}).get("kind", "crash") for r in results}))
        raise UserError(f"every run of the baseline config {baseline} failed ({kinds}), and every score is "
                        f"relative to it; check it with `autotune bench`, then remove {journal.path} and sweep again")
