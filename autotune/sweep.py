"""`autotune sweep`: measure every valid config of a spec at one context length.

Each config runs `--repeats` times, by default each time in its own benchmark process
(the tuner's evaluators, autotune.evaluators; `--process warm` measures run after run in
one warm worker instead), in one shuffled order over all
(config, repeat) pairs so that drift of the machine spreads evenly over the configs;
the baseline's first run leads, since every score is relative to it.
Every run's raw result is kept. The surface file (format in docs/strategies.md,
"Surface files") gets, per config, one score sample per run, scored exactly as the tuner
scores a trial: against the baseline (the built-in default config, measured like
every other config) with the spec's objective weights.

Runs are journalled to `<out>.runs.jsonl` as they finish; the same command again
resumes after the last finished run, on the same machine only (the journal names it).
The journal is removed once the surface is written.
`--stop-after` ends a part of a long sweep cleanly: no run starts that its time limit
could carry past the deadline, so a part fits a fixed window without losing a run.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from autotune.defaults import builtin_default
from autotune.errors import UserError
from autotune.evaluators import make_evaluator
from autotune.loop import SearchLoop
from autotune.names import KNOBS
from autotune.objective import Baseline, median, recall_violation, score
from autotune.replay.surface import surface_document
from autotune.space import SearchSpace, SpaceError
from autotune.spec import SpecError, parse_spec
from autotune.store.fingerprint import describe_fingerprint, machine_fingerprint
from autotune.sweep_runs import SweepRuns, refuse_a_failed_baseline
from autotune.workers import Slot

# kernels and torch are imported where a device is needed: they take seconds to load,
# and a spec or journal error is reported before that.

SURFACES_DIR = Path("studies/surfaces")
DEFAULT_REPEATS = 3
JOURNAL_SUFFIX = ".runs.jsonl"  # beside the surface file: the finished runs of a sweep in progress


# ------------------------------------------------------------------------------ plan
def sweep_space(spec, context: int, backends: Sequence[str], num_heads: int):
    """The tuner's space for this context: the spec's value lists plus the baseline's
    values (so the baseline is one of the configs), backend a knob when several."""

    baseline = builtin_default(num_heads, context)
    values: dict[str, list[Any]] = {}
    if len(backends) > 1:
        values["backend"] = list(backends)
        baseline = {"backend": backends[0], **baseline}
    for knob in KNOBS:
        values[knob] = sorted(set(spec.space[knob]) | {baseline[knob]})
    try:
        return SearchSpace(values, num_heads, context), baseline
    except SpaceError as exc:
        raise UserError(f"{spec.path}: [space] gives no valid config at context {context}: {exc}") from None


def run_order(n_configs: int, repeats: int, seed: int, first: int | None = None) -> list[tuple[int, int]]:
    """All (config index, repeat) pairs in one shuffled order; config `first`'s first run
    leads (the baseline: every score is relative to it, so a sweep in progress can be
    scored and a baseline that cannot run shows at once)."""
    pairs = [(i, r) for r in range(repeats) for i in range(n_configs)]
    random.Random(seed).shuffle(pairs)
    if first is not None:
        pairs.remove((first, 0))
        pairs.insert(0, (first, 0))
    return pairs


# ---------------------------------------------------------------------------- journal
def journal_header(spec, context: int, backends: Sequence[str], repeats: int, seed: int, device: str,
                   space, *, machine: dict[str, str]) -> dict[str, Any]:
    """A journal's first line (as JSON reads it back: tuples become lists). `machine` is
    the store's fingerprint (device name, torch, project version): one surface, one machine."""
    header = {"spec": spec.to_dict(), "context": context, "backends": list(backends), "repeats": repeats,
              "seed": seed, "device": device, "machine": machine, "configs": [space.key(c) for c in space.configs]}
    return json.loads(json.dumps(header))


# The spec sections a run's result depends on. The others ([search], [confirmation], the
# storage, the list of contexts) may change between the parts of a sweep.
MEASURED_SECTIONS = ("model", "workload", "space", "objective", "trials")


def header_differences(stored: dict[str, Any], header: dict[str, Any]) -> list[str]:
    """Where two journal headers differ in anything the runs measured: header fields by
    name, spec sections as [section]. Empty when a sweep may resume from `stored`."""
    differ = [key for key in sorted((set(stored) | set(header)) - {"spec"}) if stored.get(key) != header.get(key)]
    for section in MEASURED_SECTIONS:
        old, new = (dict(h.get("spec", {}).get(section) or {}) for h in (stored, header))
        if section == "workload":
            old.pop("contexts", None)
            new.pop("contexts", None)
        if section == "trials":  # what measures a run, not what it measures
            old.pop("process", None)
            new.pop("process", None)
        if old != new:
            differ.append(f"[{section}]")
    return differ


def read_journal(path: Path) -> tuple[dict[str, Any], dict[tuple[int, int], dict[str, Any]]]:
    """A journal's header and its finished runs by (config index, repeat)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])["header"]
    except (IndexError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not a sweep journal (its first line holds no header)") from None
    runs = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill: that run is measured again
        runs[(row["index"], row["repeat"])] = row
    return header, runs


class Journal:
    """Finished runs, one JSON line each, after a header that must match to resume."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.runs: dict[tuple[int, int], dict[str, Any]] = {}
        if path.exists():
            try:
                stored, runs = read_journal(path)
            except UserError as exc:
                raise UserError(f"{exc}; remove it or choose another --out") from None
            differ = header_differences(stored, header)
            if "machine" in differ:
                there = (describe_fingerprint(stored["machine"]) if stored.get("machine")
                         else "a machine it does not name (an older journal)")
                raise UserError(f"{path} holds runs measured on {there}; this machine is "
                                f"{describe_fingerprint(header['machine'])}. One surface mixes no machines: "
                                "continue it there, or start another with --out")
            if differ:
                raise UserError(f"{path} is the journal of a different sweep (it differs in {', '.join(differ)}); "
                                "remove it or choose another --out")
            self.runs = runs
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> None:
        self.runs[(row["index"], row["repeat"])] = row
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------ sweep
def sweep(spec, context: int, backends: Sequence[str], *, repeats: int = DEFAULT_REPEATS, seed: int = 0,
          out: Path | None = None, timeout_s: float | None = None, stop_after_s: float | None = None,
          bench_command: Sequence[str] | None = None, process: str = "fresh",
          log: Callable[[str], None] | None = None) -> Path | None:
    """Measure every valid config `repeats` times and write the surface file; returns its
    path, or None when `stop_after_s` ended the sweep first (the journal keeps its runs)."""
    from kernels import DeviceUnavailableError, get_config, resolve_device

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        device = resolve_device(spec.model.device)
    except DeviceUnavailableError as exc:
        raise UserError(f"{spec.path}: [model] device = {spec.model.device!r}: {exc}") from None
    device_str = spec.model.device if spec.model.device != "auto" else device.type
    num_heads = get_config(spec.model.shape).num_heads
    space, baseline = sweep_space(spec, context, backends, num_heads)
    out = out or SURFACES_DIR / f"{device.type}-{spec.model.shape}-{'+'.join(backends)}-L{context}.json"
    journal = Journal(out.with_name(out.name + JOURNAL_SUFFIX),
                      journal_header(spec, context, backends, repeats, seed, device_str, space,
                                     machine=machine_fingerprint(device)))
    base_index = space.index(baseline)
    order = run_order(len(space), repeats, seed, first=base_index)
    todo = [(i, r) for i, r in order if (i, r) not in journal.runs]
    log(f"sweep {out.name}: {len(space)} configs x {repeats} runs = {len(order)} runs"
        + (f" ({len(order) - len(todo)} already done, resuming)" if len(todo) < len(order) else ""))
    refuse_a_failed_baseline(journal, base_index, repeats, baseline)
    search = SweepRuns(spec, space, journal, order, todo, base_index, baseline, context=context, repeats=repeats,
                       device=device_str, timeout_s=timeout_s, stop_after_s=stop_after_s, log=log)
    evaluator = make_evaluator(process, command=bench_command)
    try:
        SearchLoop(search, [(Slot(), evaluator)]).run()
    finally:
        evaluator.close()
    if search.stopped:
        return None
    doc = build_surface(spec, space, baseline, journal.runs, context=context, backends=backends,
                        repeats=repeats, seed=seed, device_kind=device.type, device=device_str, name=out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    journal.path.unlink()
    return out


def build_surface(spec, space, baseline_cfg: dict[str, Any], runs: dict[tuple[int, int], dict[str, Any]], *,
                  context: int, backends: Sequence[str], repeats: int, seed: int, device_kind: str, device: str,
                  name: str, partial: bool = False) -> dict[str, Any]:
    """The surface document from the finished runs: one score sample per ok, feasible run.
    `partial`: a sweep still in progress; its configs without a finished run are left out."""

    base_index = space.index(baseline_cfg)
    base_runs = [row["result"] for (i, _), row in runs.items() if i == base_index and row["result"].get("status") == "ok"]
    if not base_runs:
        if partial and not any(i == base_index for i, _ in runs):
            raise UserError(f"the baseline config {baseline_cfg} has no finished run yet, so nothing can be "
                            "scored; continue the sweep until it has one")
        raise UserError("every run of the baseline config failed, so no score can be computed; "
                        "check the benchmark with `autotune bench` on the baseline config")
    medians = {key: statistics.median(m for m in (median(r["metrics"].get(key)) for r in base_runs) if m is not None)
               for key in ("prefill_tok_s", "decode_tok_s")}
    base = Baseline(**medians)
    entries = []
    env = None
    for index, cfg in enumerate(space.configs):
        rows = sorted((row for (i, _), row in runs.items() if i == index), key=lambda row: row["order"])
        if partial and not rows:
            continue
        samples, errors = [], []
        for row in rows:
            result = row["result"]
            if result.get("status") != "ok":
                errors.append(result.get("error") or {"kind": "crash", "message": ""})
                continue
            env = env or result.get("env")
            violation = recall_violation(result["metrics"], spec.objective)
            if violation > 0:
                errors.append({"kind": "recall_floor", "message": f"recall below the floor by {violation:.3f}"})
                continue
            samples.append(score(result["metrics"], base, spec.objective))
        entries.append({
            "config": cfg,
            "samples": samples,
            "error": None if samples else (errors[0] if errors else {"kind": "missing", "message": "not measured"}),
            "failures": len(errors),
            "runs": [{"repeat": row["repeat"], "order": row["order"], "wall_s": round(row["wall_s"], 3),
                      "status": row["result"].get("status"), "error": row["result"].get("error"),
                      "metrics": row["result"].get("metrics"), "counters": row["result"].get("counters"),
                      "timings": row["result"].get("timings")} for row in rows],
        })
    return surface_document(
        name=name,
        knobs=space.values,
        objective={"name": "score", "direction": "maximize",
                   "definition": "w_decode*decode/decode_baseline + w_prefill*prefill/prefill_baseline + w_recall*recall",
                   "weights": spec.to_dict()["objective"], "baseline": {"config": baseline_cfg, **base.as_dict()}},
        entries=entries,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        shape=spec.model.shape,
        dtype=spec.model.dtype,
        device={"kind": device_kind, "device": device, "env": env},
        backends=list(backends),
        context=context,
        repeats=repeats,
        order_seed=seed,
        spec=spec.to_dict(),
        **({"partial": {"configs_measured": len(entries), "configs": len(space), "runs_finished": len(runs),
                        "runs_planned": len(space) * repeats}} if partial else {}),
    )


def surface_from_journal(path: Path) -> dict[str, Any]:
    """The surface document of a sweep in progress, from its journal alone (no device, no
    spec file): its finished runs scored as the finished sweep scores them, the configs
    not yet measured left out, and a `partial` block that says how much is there."""
    import torch

    from kernels import get_config

    def unset_removed(value):  # spec.to_dict() writes a setting the spec left unset as None
        if isinstance(value, dict):
            return {k: unset_removed(v) for k, v in value.items() if v is not None}
        return value

    header, runs = read_journal(path)
    try:
        spec = parse_spec(unset_removed(header["spec"]), str(path))
    except (SpecError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: the journal's header holds no usable spec ({exc})") from None
    space, baseline = sweep_space(spec, header["context"], header["backends"], get_config(spec.model.shape).num_heads)
    if json.loads(json.dumps([space.key(c) for c in space.configs])) != header["configs"]:
        raise UserError(f"{path}: this version enumerates the spec's configs differently from the sweep that "
                        "wrote the journal, so its run indices cannot be read")
    name = path.name.removesuffix(JOURNAL_SUFFIX).removesuffix(".json")
    return build_surface(spec, space, baseline, runs, context=header["context"], backends=header["backends"],
                         repeats=header["repeats"], seed=header["seed"], device_kind=torch.device(header["device"]).type,
                         device=header["device"], name=name, partial=True)
