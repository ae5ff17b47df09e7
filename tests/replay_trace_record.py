"""Pinned replay runs: what a replay of a small surface gives, config by config.

`record()` replays a few strategies on two small synthetic surfaces (one xLSTM-like with
a warm start, one Kernel Tuner cache with failing and invalid configs) and keeps, per
run, every config the sampler proposed (its index on the surface, None when invalid),
the best-so-far values, the labels and counts, plus the P-scores of a comparison.
tests/data/replay_traces.json holds this record; `python tests/replay_trace_record.py`
writes it again (only when a change of replay's numbers is intended).
"""

from __future__ import annotations

import json
from pathlib import Path

from autotune.replay import replay_run, run_comparison, summarise
from autotune.replay.synthetic import kernel_surface, xlstm_surface

RECORD_PATH = Path(__file__).parent / "data" / "replay_traces.json"
STRATEGIES = ("random", "portfolio", "bandit", "local", "tpe", "nsga2")
SEEDS = (0, 3)
EVALS = 25


def surfaces():
    return {"xlstm": xlstm_surface(1), "kernel": kernel_surface(2)}


def _run(surface, strategy, seed, **kwargs) -> dict:
    proposed = []
    index = surface.space.index

    def recording_index(params):  # every proposal asks the space for its config's index once
        found = index(params)
        proposed.append(found)
        return found

    surface.space.index = recording_index
    try:
        trace = replay_run(surface, strategy, seed, EVALS, **kwargs)
    finally:
        del surface.space.index
    return {"proposed": proposed, "best": trace.best.tolist(), "proposed_by": trace.proposed_by,
            "proposals": trace.proposals, "invalid": trace.invalid, "revisits": trace.revisits,
            "exhausted": trace.exhausted}


def record() -> dict:
    out = {}
    for name, surface in surfaces().items():
        for strategy in STRATEGIES:
            for seed in SEEDS:
                out[f"{name}/{strategy}/{seed}"] = _run(surface, strategy, seed)
        comp = run_comparison(surface, ["random", "portfolio", "tpe"], seeds=range(3), horizon=EVALS)
        out[f"{name}/p_score"] = {s: v["p_score"]["per_seed"] for s, v in summarise(comp)["strategies"].items()}
    warm = surfaces()["xlstm"]
    ranking = xlstm_surface(7).ranking()
    out["xlstm/portfolio/warm"] = _run(warm, "portfolio", 5, warm_start=ranking)
    out["xlstm/portfolio/nostart"] = _run(warm, "portfolio", 5, start=False)
    out["kernel/portfolio/capped"] = _run(surfaces()["kernel"], "portfolio", 1, max_proposals=12)
    out["xlstm/tpe/stalled"] = _run(surfaces()["xlstm"], "tpe", 0, stall_limit=2)
    return out


if __name__ == "__main__":
    RECORD_PATH.write_text(json.dumps(record(), indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {RECORD_PATH}")
